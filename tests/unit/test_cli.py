"""The `agentfactory` command: help, version, exit codes, config overrides, run."""

import json

import yaml
from typer.testing import CliRunner

from agentfactory.cli import app

runner = CliRunner()


def test_help_and_version():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("domains", "config", "run"):
        assert cmd in r.output
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("agentfactory ")
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_python_dash_m_is_the_cli():
    """`python -m agentfactory` where the console script is not installed (a checkout on PYTHONPATH)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "agentfactory", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Usage: agentfactory" in r.stdout and "run" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "agentfactory", "no-such-command"], capture_output=True, text=True
    )
    assert r.returncode == 2


def test_domains_validate_all_and_list():
    r = runner.invoke(app, ["domains", "validate"])
    assert r.exit_code == 0, r.output
    assert "retail_orders" in r.output
    r = runner.invoke(app, ["domains", "list"])
    assert r.exit_code == 0 and "e-commerce" in r.output


def test_domains_schema_is_json():
    r = runner.invoke(app, ["domains", "schema"])
    assert r.exit_code == 0
    schema = json.loads(r.output)
    assert schema["title"] == "Domain" and "tools" in schema["properties"]


def test_config_show_applies_overrides(tmp_path):
    r = runner.invoke(app, ["config", "show", "pipelines/quickstart.yaml", "--set", "seed=7", "-s", "name=x"])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(r.output)
    assert cfg["seed"] == 7 and cfg["name"] == "x"
    r = runner.invoke(app, ["config", "show", "pipelines/quickstart.yaml", "--set", "sede=7"])
    assert r.exit_code == 1
    assert "--set sede=7: <root>: unknown key 'sede'" in r.stderr
    bad_curriculum = "curriculum={data: {rowz: 10}}"  # checked at load, not after the stages before it
    r = runner.invoke(app, ["config", "show", "pipelines/quickstart.yaml", "--set", bad_curriculum])
    assert r.exit_code == 1 and "curriculum.data: unknown key 'rowz'" in r.stderr
    bad_recall = "curriculum.data={kind: recall, gap: -1}"
    r = runner.invoke(app, ["config", "show", "pipelines/quickstart.yaml", "--set", bad_recall])
    assert r.exit_code == 1 and "curriculum.data.gap: Input should be greater than or equal to 0" in r.stderr


def test_run_writes_outputs(tmp_path):
    stages = [
        x
        for s in ("synth", "corpus", "tokenizer", "pretrain", "sft", "rl", "eval")
        for x in ("--set", f"{s}=null")
    ]
    r = runner.invoke(app, ["run", "pipelines/quickstart.yaml", "--set", f"output_dir={tmp_path}", *stages])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert "retail_orders" in [d["name"] for d in summary["domains"]["domains"]]
    assert (tmp_path / "quickstart" / "config.json").exists()


def test_tools_list_show_and_domains_new(tmp_path):
    r = runner.invoke(app, ["tools", "list", "--domain", "retail_orders"])
    assert r.exit_code == 0 and "cancel_order" in r.output
    r = runner.invoke(app, ["tools", "show", "retail_orders.cancel_order"])
    assert r.exit_code == 0
    spec = json.loads(r.output)[0]
    assert spec["domain"] == "retail_orders" and "order_id" in spec["parameters"]["properties"]
    assert runner.invoke(app, ["tools", "show", "no_such_tool"]).exit_code == 1
    out = tmp_path / "my_desk.yaml"
    r = runner.invoke(app, ["domains", "new", "my_desk", "--category", "crm", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["domains", "validate", str(out)]).exit_code == 0
    assert runner.invoke(app, ["domains", "new", "my_desk", "--out", str(out)]).exit_code == 1  # exists
    assert (
        runner.invoke(
            app, ["domains", "new", "x", "--category", "nope", "--out", str(tmp_path / "x.yaml")]
        ).exit_code
        == 1
    )


def test_model_info():
    r = runner.invoke(app, ["model", "info", "kimi-k2-1t", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["routed_experts"] == 384 and info["layers"] == 61
    assert 1.0e12 < info["total_params"] < 1.06e12 and 32e9 < info["active_params"] < 33.3e9
    r = runner.invoke(app, ["model", "info", "k2-mini"])
    assert r.exit_code == 0 and "active params" in r.output
    assert runner.invoke(app, ["model", "info", "gpt-5"]).exit_code == 1


def test_tokenizer_train(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"order W{i:07d} for customer {i} is pending" for i in range(300)))
    r = runner.invoke(
        app, ["tokenizer", "train", str(corpus), "--out", str(tmp_path / "tok"), "--vocab-size", "300"]
    )
    assert r.exit_code == 0, r.output
    from agentfactory.model import load_tokenizer

    tok = load_tokenizer(tmp_path / "tok")
    assert len(tok) <= 300 and tok.convert_tokens_to_ids("<|im_end|>") == 1
    assert (
        runner.invoke(
            app, ["tokenizer", "train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "t2")]
        ).exit_code
        == 1
    )


def test_train_sft_cli_reports_bad_config(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("model: {preset: debug}\ntokenizer: /nonexistent\ndata: {paths: [x.jsonl]}\nstepz: 3\n")
    r = runner.invoke(app, ["train", "sft", str(cfg)])
    assert r.exit_code == 1 and "unknown key 'stepz'" in r.stderr


def test_rl_run_reports_bad_config(tmp_path):
    cfg = tmp_path / "rl.yaml"
    cfg.write_text("model: /nonexistent\niterationz: 3\n")
    r = runner.invoke(app, ["rl", "run", str(cfg)])
    assert r.exit_code == 1 and "unknown key 'iterationz'" in r.stderr
    r = runner.invoke(app, ["rl", "run", "pipelines/rl.yaml", "--set", "model=/nonexistent/model"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception  # handled, no traceback


def test_rl_run_flags_set_the_engine_workers(tmp_path, monkeypatch):
    import agentfactory.rl.run as run

    seen = {}

    def fake_rl_run(cfg, console=None):
        seen["engine"] = cfg.engine
        raise ValueError("stopped by the test")

    monkeypatch.setattr(run, "rl_run", fake_rl_run)
    args = ["rl", "run", "pipelines/rl.yaml", "--set", f"model={tmp_path}", "--workers", "2"]
    r = runner.invoke(app, [*args, "--ray-address", "10.0.0.1:6379"])
    assert r.exit_code == 1 and "rl failed: stopped by the test" in r.stderr
    assert seen["engine"].workers == 2 and seen["engine"].ray_address == "10.0.0.1:6379"
    assert runner.invoke(app, [*args[:-1], "0"]).exit_code == 2  # usage error: at least one worker


def test_read_only_output_is_one_clear_line(tmp_path):
    # The tests run as root (mode bits do not stop root), so "read-only" is a file where the output
    # directory must go: the same check (mkdir + a probe write) reports EACCES/EROFS the same way.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    r = runner.invoke(app, ["synth", "run", "pipelines/tool_sft.yaml", "--set", f"output_dir={blocker}"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception  # no traceback
    assert r.stderr.strip() == f"{blocker}/tool_sft/synth: not writable (Not a directory)"
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(
        f"model: {{preset: debug}}\ntokenizer: /nonexistent\ndata: {{paths: [x.jsonl]}}\noutput_dir: {blocker}\n"
    )
    r = runner.invoke(app, ["train", "sft", str(cfg)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert (
        r.stderr.strip()
        == f"sft failed: {blocker}: not writable (a file is in the way of this output directory)"
    )


def test_eval_names_checkpoints_and_rejects_bad_input(tmp_path):
    from agentfactory.cli.eval import checkpoints

    for d in ("runs/a/sft/model", "ckpt", "other"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "config.json").write_text("{}")
    named = checkpoints(
        [str(tmp_path / "runs/a/sft/model"), str(tmp_path / "ckpt"), f"mine={tmp_path / 'other'}"]
    )
    assert list(named) == ["sft", "ckpt", "mine"]

    def flat(result) -> str:  # typer wraps usage errors in a box
        return " ".join(result.output.replace("│", " ").split())

    runner = CliRunner()
    missing = runner.invoke(app, ["eval", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a checkpoint folder" in flat(missing)
    twice = runner.invoke(app, ["eval", str(tmp_path / "ckpt"), f"ckpt={tmp_path / 'other'}"])
    assert twice.exit_code == 2 and "two checkpoints named 'ckpt'" in flat(twice)
    bad = runner.invoke(
        app, ["eval", str(tmp_path / "ckpt"), "--set", "wrlds=2", "--out", str(tmp_path / "o")]
    )
    assert bad.exit_code == 1 and "wrlds" in bad.output


def test_eval_yaml_is_the_quickstarts_eval_stage():
    from agentfactory.config import load_config
    from agentfactory.pipeline import PipelineConfig
    from agentfactory.stages import EvalStage

    quickstart = load_config("pipelines/quickstart.yaml", PipelineConfig).eval
    settings = load_config("pipelines/eval.yaml", EvalStage)
    assert settings.model_dump(exclude={"models"}) == quickstart.model_dump(exclude={"models"})
