"""YAML with positions, duplicate keys, dotted overrides and located validation errors."""

import pytest

from agentfactory.config import ConfigError, StrictModel, apply_overrides, load_config, parse_yaml


class Inner(StrictModel):
    lr: float = 1e-3
    steps: int = 10


class Cfg(StrictModel):
    name: str
    train: Inner = Inner()
    tags: list[str] = []


def test_positions_point_at_keys_and_items():
    data, pos = parse_yaml("name: x\ntrain:\n  lr: 0.1\ntags:\n  - a\n  - b\n", "f.yaml")
    assert data["train"]["lr"] == 0.1
    assert pos.at(("train", "lr")) == (3, 3)
    assert pos.at(("tags", 1)) == (6, 5)
    assert pos.at(("train", "missing", "deep")) == (2, 1)  # nearest located ancestor


def test_duplicate_keys_are_errors():
    with pytest.raises(ConfigError) as e:
        parse_yaml("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert str(e.value.errors[0]).startswith(
        "f.yaml:3:1: invalid YAML: duplicate key 'a' (first defined on line 1)"
    )


def test_load_config_reports_every_error_with_location(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: run\ntrain:\n  lr: fast\n  stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, Cfg)
    lines = sorted(str(x) for x in e.value.errors)
    assert (
        lines[0] == f"{f}:3:3: train.lr: Input should be a valid number, unable to parse string as a number"
    )
    assert lines[1] == f"{f}:4:3: train: unknown key 'stepz'"


def test_overrides_parse_values_and_point_errors_at_the_flag(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: run\n")
    cfg = load_config(f, Cfg, ["train.lr=0.5", "train.steps=7", "tags=[a, b]"])
    assert (cfg.train.lr, cfg.train.steps, cfg.tags) == (0.5, 7, ["a", "b"])
    with pytest.raises(ConfigError) as e:
        load_config(f, Cfg, ["train.steps=many"])
    assert str(e.value.errors[0]).startswith("--set train.steps=many: train.steps:")
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="'name' is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_files_that_are_not_yaml_mappings(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml", Cfg)
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.yaml", Cfg)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.yaml", Cfg)


def test_writable_dir_names_the_path_and_why(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from agentfactory.config import NotWritable, writable_dir

    assert writable_dir(tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotWritable, match=f"^{afile}: not writable .*file is in the way"):
        writable_dir(afile)
    with pytest.raises(NotWritable, match=f"^{afile / 'sub'}: not writable \\(Not a directory\\)"):
        writable_dir(afile / "sub")
    if os.geteuid() != 0:  # root ignores mode bits; the EACCES path is also covered below
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(NotWritable, match="not writable \\(Permission denied\\)"):
            writable_dir(ro)

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", denied)  # what a read-only mount or chmod 555 gives
    with pytest.raises(NotWritable, match=f"^{tmp_path}: not writable \\(Permission denied\\)$"):
        writable_dir(tmp_path)
