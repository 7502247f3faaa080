"""Fuzzing the two places model output meets our code: the tool-call parser (here 500 cases; the
10k-case run is tests/integration/test_fuzz_parser.py) and tool execution with arguments generated
from every shipped tool's JSON Schema (any valid call executes or fails with a message)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from agentfactory.model.chat import SPECIAL_TOKENS, parse_assistant
from agentfactory.tools import ToolRuntime, domain_files, load_domain

PIECES = [t for t in SPECIAL_TOKENS] + [
    "functions.",
    ":0",
    ":1",
    "{",
    "}",
    '"a": 1',
    "[",
    "]",
    "get_order",
    " ",
    "\n",
    "null",
    "NaN",
]
fragments = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=24).map("".join)


def check_parse(text: str) -> None:
    parsed = parse_assistant(text)
    assert parsed.error is None or parsed.tool_calls == []  # never half of a broken turn
    for call in parsed.tool_calls:
        assert isinstance(call.arguments, dict)
        json.dumps(call.arguments)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=fragments)
def test_tool_call_parser_never_crashes(text):
    check_parse(text)


DOMAINS = {f.stem: load_domain(f) for f in domain_files()}
TOOLS = [(d, t.name) for d, dom in sorted(DOMAINS.items()) for t in dom.tools]


@pytest.mark.parametrize(("domain", "tool"), TOOLS, ids=[f"{d}.{t}" for d, t in TOOLS])
def test_tool_arguments_from_schema(domain, tool):
    runtime = ToolRuntime(DOMAINS[domain], seed=0)
    schema = DOMAINS[domain].tool(tool).parameters
    before = runtime.state_hash()

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(args=from_schema(schema))
    def run(args):
        result = runtime.call(tool, args)
        assert result.ok or (isinstance(result.error, str) and result.error)
        assert not (result.error or "").startswith("invalid arguments"), result.error  # valid by construction
        if not result.ok:
            json.dumps(result.to_message_content())

    run()
    bad = runtime.call(
        tool, {k: {"not": ["a", "valid", "value"]} for k in [*schema.get("properties", {}), "x"]}
    )
    assert (not bad.ok and bad.error.startswith("invalid arguments")) or not schema.get("properties")
    assert runtime.state_hash() == before or any(
        h.result.ok for h in runtime.history
    )  # failed calls change nothing
