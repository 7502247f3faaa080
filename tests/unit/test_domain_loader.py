"""Shipped domains validate; the published schema is fresh; every malformed file gets a located error."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentfactory.cli import app
from agentfactory.config import ConfigError
from agentfactory.tools import domain_files, domain_json_schema, load_domain
from agentfactory.tools.loader import SCHEMA_PATH

BAD = sorted((Path(__file__).parents[1] / "data" / "bad_domains").glob("*.yaml"))
LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>\S.*)$")
runner = CliRunner()


def test_shipped_domains_validate():
    files = domain_files()
    assert files, "no domains shipped"
    for f in files:
        d = load_domain(f)
        assert d.tools and d.tasks
        specs = d.tool_specs()
        assert all(s.domain == d.name and s.category == d.category for s in specs)


def test_committed_schema_is_fresh():
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == domain_json_schema(), (
        "run `make schema` to regenerate tools_repo/schema/domain.schema.json"
    )


def test_corpus_is_large_enough():
    assert len(BAD) >= 12


def _marked_line(path: Path) -> int:
    """The corpus marks the offending line with '# <-- error' (line 1 for whole-file problems)."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        return 1
    return next((i + 1 for i, line in enumerate(lines) if "<-- error" in line), 1)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_malformed_domain_gets_one_located_line_per_error(path):
    with pytest.raises(ConfigError) as e:
        load_domain(path)
    lines = [str(err) for err in e.value.errors]
    assert lines
    for line in lines:
        m = LOCATED.match(line)
        assert m, line
        assert m["file"] == str(path) and "\n" not in line
    assert _marked_line(path) in [err.line for err in e.value.errors], lines

    result = runner.invoke(app, ["domains", "validate", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert lines[0] in result.output.replace("\n", "") or lines[0] in result.stderr.replace("\n", "")


EXPECTED = {
    "yaml_syntax": "invalid YAML",
    "unknown_key": "unknown key 'descripton'",
    "wrong_type": "42 is not of type 'string'",
    "missing_required": "'category' is a required property",
    "duplicate_tool": "duplicate tool name 'get_order'",
    "dangling_pointer": "has no 'price' at '/orders/{order_id}'",
    "invalid_patch_op": "'modify' is not one of",
    "patch_missing_value": "op 'replace' needs a 'value'",
    "unknown_category": "unknown category 'e-comerce'",
    "rubric_missing_tool": "unknown tool 'refund_order'",
    "blueprint_missing_tool": "unknown tool 'cancel_orders'",
    "invalid_param_schema": "'strng' is not a JSON Schema type",
    "unknown_variable": "unknown variable 'orderid'",
    "bad_expression": "cannot parse expression",
    "duplicate_key": "duplicate key 'returns'",
    "bad_task_kind": "'one_shot' is not one of",
    "unknown_sample_var": "unknown variable 'order'",
    "empty": "file is empty",
    "top_level_list": "got a list",
    "binary": "not a text file",
    "where_self_compare": "compares the item's field with itself",
    "nested_pointer": "nested pointers are not supported",
    "boolean_key": "this key must be a string: quote it",
}


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_malformed_domain_says_what_is_wrong(path):
    with pytest.raises(ConfigError) as e:
        load_domain(path)
    assert any(EXPECTED[path.stem] in str(err) for err in e.value.errors), e.value.errors


def test_all_errors_reported_at_once(tmp_path):
    text = (Path(__file__).parents[1] / "data" / "bad_domains" / "unknown_category.yaml").read_text()
    text = text.replace("must_call: [cancel_order]", "must_call: [nope]").replace(
        "{order_id} not found", "{x}"
    )
    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_domain(tmp_path / "d.yaml")
    msgs = " | ".join(map(str, e.value.errors))
    assert "unknown category" in msgs and "unknown tool 'nope'" in msgs and "unknown variable 'x'" in msgs
    assert [x.line for x in e.value.errors] == sorted(x.line for x in e.value.errors)


def test_semantic_rules_on_a_loaded_domain():
    d = load_domain(domain_files()[0])
    for t in d.tasks:
        names = {k: f"<{k}>" for k in t.sample}
        rubric = t.rubric.to_rubric(names)
        assert rubric.checks, t.id
        assert all(c.tool in {x.name for x in d.tools} for c in t.blueprint_for(names).calls)
