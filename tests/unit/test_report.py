"""The run report: every figure is drawn from stage files, partial runs say what is missing,
and targets are checked plainly."""

import json
from pathlib import Path

from agentfactory.report import FIGURES, build_report


def fake_run(root: Path, rl_gain: float = 0.02) -> Path:
    run = root / "demo"
    for stage in ("pretrain", "sft"):
        (run / stage).mkdir(parents=True)
        rows = [
            {"step": s, "loss": 5.0 / s, "max_logit": [10.0 + s, 20.0 + s], "expert_load": [[s, 10, 3, 7]]}
            for s in range(1, 6)
        ]
        (run / stage / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo'
        )
    (run / "synth" / "dataset").mkdir(parents=True)
    (run / "synth" / "dataset" / "stats.json").write_text(
        json.dumps(
            {
                "by_domain": {"retail_orders": {"episodes": 10, "accepted": 9}},
                "rejection_reasons": {"final_state failed": 1},
            }
        )
    )
    (run / "synth" / "examples.html").write_text("<p id='example'>an example</p>")
    (run / "rl").mkdir()
    rl = [
        {
            "iteration": i,
            "reward/tool_use": 0.1 * i,
            "component/rubric": 0.2 * i,
            "time/rollout": 3,
            "time/train": 2,
            "time/sync": 0.1,
        }
        for i in range(4)
    ]
    (run / "rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl))
    (run / "eval").mkdir()
    for name, rate in (("base", 0.05), ("sft", 0.45), ("rl", 0.45 + rl_gain)):
        (run / "eval" / f"{name}.json").write_text(
            json.dumps(
                {
                    "tasks": 100,
                    "success": round(100 * rate),
                    "success_rate": rate,
                    "by_domain": {"retail_orders": {"tasks": 100, "success": 1, "rate": rate}},
                    "argument_copying": {"token_accuracy": rate, "first_token": 0.25, "exact": 0.125},
                }
            )
        )
    copied = {"random_lists": {"token_accuracy": 0.93, "exact": 0.61, "rows": 100}}
    summary = {"synth": {"seconds": 12.0}, "sft": {"seconds": 40.0}, "pretrain": {"copy_accuracy": copied}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_every_figure_and_a_plain_verdict(tmp_path):
    run = fake_run(tmp_path)
    page = build_report(run, tau=30.0).read_text()
    for name in FIGURES:
        assert (run / "report_files" / f"{name}.png").stat().st_size > 1000
        assert f'src="report_files/{name}.png"' in page
    assert "sft ≥ base + 30 points: met" in page
    assert "rl ≥ sft + 5 points: <b style='color:#c44e52'>NOT met</b>" in page  # +2 points only
    assert "id='example'" in page
    assert page.index(">base<") < page.index(">sft<") < page.index(">rl<")
    assert "<td>after pretrain</td><td>random lists</td><td>93%</td><td>61%</td>" in page
    assert "<td>25%</td><td>12%</td></tr>" in page  # argument copying, first token and whole values


def test_partial_run_says_what_is_missing(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    page = build_report(run).read_text()
    assert page.count("not available: the stage did not run") == len(FIGURES)
    assert "not measured" in page and "In-context copying" not in page
