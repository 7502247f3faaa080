"""Held-out evaluation: the oracle scores 100%, a useless policy ~0%, worlds never overlap training."""

from agentfactory.eval import EvalConfig, evaluate, evaluate_oracle, heldout_tasks
from agentfactory.synth.agents import PolicyAgent
from agentfactory.synth.config import SynthConfig

from .fakes import ScriptedEngine

CFG = EvalConfig(domains=["retail_orders", "bank_accounts"], worlds=2)


def test_oracle_is_the_ceiling():
    summary = evaluate_oracle(CFG)
    assert summary["tasks"] > 10 and summary["success_rate"] == 1.0
    assert set(summary["by_domain"]) == {"retail_orders", "bank_accounts"}
    assert {"single_call", "refusal"} <= set(summary["by_kind"])


def test_a_useless_policy_fails_and_reasons_are_counted_and_episodes_kept(tmp_path):
    from typer.testing import CliRunner

    from agentfactory.cli import app
    from agentfactory.records import Trajectory

    path = tmp_path / "eval" / "policy.jsonl"
    summary = evaluate(PolicyAgent(ScriptedEngine(lambda r: "I cannot help with that.")), CFG, episodes=path)
    assert summary["success_rate"] < 0.3  # only tasks whose right answer is to do nothing could pass
    assert summary["failure_reasons"]
    episodes = [Trajectory.model_validate_json(line) for line in path.read_text().splitlines()]
    assert len(episodes) == summary["tasks"]
    assert sum(e.judge.accepted for e in episodes) == summary["success"]
    shown = CliRunner().invoke(app, ["data", "show", str(path), "--rejected", "--limit", "1"])
    assert shown.exit_code == 0, shown.output
    assert "I cannot help with that." in shown.output and "rejected" in shown.output.lower()


def test_heldout_worlds_do_not_overlap_synthesis():
    train = SynthConfig()
    held = {t.meta["world_seed"] for t in heldout_tasks(EvalConfig(worlds=5))}
    assert held.isdisjoint(range(train.world_start, train.world_start + train.worlds))
    assert max(held) < 100 <= train.world_start
