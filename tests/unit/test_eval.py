"""Held-out evaluation: the oracle scores 100%, a useless policy ~0%, worlds never overlap training."""

import json

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


def test_copy_accuracy_counts_repeat_tokens_and_exact_rows():
    from types import SimpleNamespace

    import torch

    from agentfactory.eval.copying import copy_accuracy
    from agentfactory.train.data import IGNORE, TokenDataset, recall_rows

    class Lookahead(torch.nn.Module):
        """Predicts the true next token except where the next token is `wrong`."""

        def __init__(self, wrong: int) -> None:
            super().__init__()
            self.wrong = wrong

        def forward(self, ids):
            nxt = torch.roll(ids, -1, dims=1)
            nxt = torch.where(nxt == self.wrong, nxt + 1, nxt)
            return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, 64).float())

    ids = [torch.tensor([5, 6, 7, 9, 6, 7]), torch.tensor([8, 9, 3, 9, 3])]
    labels = [torch.tensor([IGNORE] * 4 + [6, 7]), torch.tensor([IGNORE] * 3 + [9, 3])]
    rows = TokenDataset(ids, labels, pad_id=0)
    assert copy_accuracy(Lookahead(wrong=-1), rows) == {
        "token_accuracy": 1.0,
        "first_token": 1.0,
        "exact": 1.0,
        "rows": 2,
    }
    assert copy_accuracy(Lookahead(wrong=7), rows) == {
        "token_accuracy": 0.75,
        "first_token": 1.0,  # row 1 misses its second token
        "exact": 0.5,
        "rows": 2,
    }
    assert copy_accuracy(Lookahead(wrong=6), rows)["first_token"] == 0.5
    assert copy_accuracy(Lookahead(wrong=7), rows, limit=1)["token_accuracy"] == 0.5

    from agentfactory.model.tokenizer import train_tokenizer

    doc = "Note: LK-7698, tammy59@wagner.com.\nAgain: LK-7698, tammy59@wagner.com."
    tok = train_tokenizer([doc] * 20 + ["Again: the note is here."] * 20, vocab_size=320)
    (data,) = [recall_rows([doc], tok)]
    ids, labels = data.ids[0], data.labels[0]
    assert ids.tolist() == tok.encode(doc, add_special_tokens=False)  # tokenized whole, as pretrained
    assert tok.decode(ids[labels != IGNORE]) == "LK-7698, tammy59@wagner.com."  # "Again: " is context


def test_argument_rows_label_values_said_earlier_inside_the_call():
    from agentfactory.eval.copying import argument_rows
    from agentfactory.train.data import IGNORE

    class CharTok:
        pad_token_id = 0

        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    def call(**arguments):  # OpenAI format, as datasets and `Trajectory.to_openai()` give it
        fn = {"name": "find", "arguments": json.dumps(arguments)}
        return {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": fn}]}

    record = {
        "messages": [
            {"role": "user", "content": 'My email is ann@x.io, order W1 "urgent".'},
            call(email="ann@x.io", note="never said", count="2"),
            {"role": "tool", "tool_call_id": "c", "content": '{"id": "U7"}'},
            call(user_id="U7", order='W1 "urgent"'),
        ]
    }
    rows = argument_rows([record], CharTok())
    values = ["".join(chr(t) for t in row[row != IGNORE].tolist()) for row in rows.labels]
    assert values == ["ann@x.io", "U7", 'W1 \\"urgent\\"']  # as the call spells it (JSON-escaped)
    for ids, labels in zip(rows.ids, rows.labels, strict=True):
        context = "".join(chr(t) for t in ids[labels == IGNORE].tolist())
        assert context.endswith('": "') and "<|tool_call_argument_begin|>" in context
    assert len(argument_rows([record], CharTok(), limit=2).ids) == 2


def _call_turn(name: str, arguments: str) -> str:
    from agentfactory.model.chat import ARG_BEGIN, CALL_BEGIN, SECTION_BEGIN

    return f"{SECTION_BEGIN}{CALL_BEGIN}functions.{name}:0{ARG_BEGIN}{arguments}"


def test_first_errors_are_classified_by_where_they_fall():
    from agentfactory.eval.anatomy import classify

    turn = _call_turn("find_customer", '{"email": "zed@x.io", "note": "vip"}') + "<|tool_call_end|>"
    prior = "user: my email is zed@x.io"
    at = {  # the turn up to its first wrong token -> category
        "": "call or answer",
        turn[: turn.index("customer")]: "tool name",
        _call_turn("find_customer", '{"em'): "call syntax",
        _call_turn("find_customer", '{"email": "'): "copied value: first token",
        _call_turn("find_customer", '{"email": "zed@'): "copied value: later token",
        _call_turn("find_customer", '{"email": "zed@x.io", "note": "v'): "other value",  # never said
    }
    for wrong_at, category in at.items():
        assert turn.startswith(wrong_at)
        assert classify(turn, wrong_at, prior) == category, wrong_at
    assert classify("Sure, which order?<|im_end|>", "Sure, wh", prior) == "text"


def test_turn_errors_count_each_turn_under_its_first_wrong_token():
    from types import SimpleNamespace

    import torch

    from agentfactory.eval.anatomy import turn_errors

    class CharTok:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    class Lookahead(torch.nn.Module):
        """Predicts the true next token, except a wrong one wherever the next token is 'Z'."""

        def forward(self, ids):
            nxt = torch.roll(ids, -1, dims=1)
            nxt = torch.where(nxt == ord("Z"), nxt + 1, nxt)
            return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, 256).float())

    call = {
        "id": "c0",
        "type": "function",
        "function": {"name": "find", "arguments": '{"email": "Zed@x.io"}'},
    }
    record = {
        "messages": [
            {"role": "user", "content": "hi, I am Zed@x.io"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c0", "content": "ok"},
            {"role": "assistant", "content": "Done."},
        ],
        "tools": [{"type": "function", "function": {"name": "find", "parameters": {}}}],
    }
    scores = turn_errors(Lookahead(), CharTok(), [record, record], limit=1)
    assert scores["turns"] == 2 and scores["right"] == 1  # the limit: one record, its two turns
    assert scores["first_error"]["copied value: first token"] == 1
    assert sum(scores["first_error"].values()) == 1


def test_eval_stage_runs_on_the_torch_engine(tmp_path):
    """The quickstart's eval stage with `engine.kind: torch` (no vLLM): each checkpoint is swapped into
    one engine, evaluated on the same held-out tasks, and teacher-forced on the oracle's episodes."""
    from rich.console import Console

    from agentfactory.stages import EvalStage, evaluate_models
    from tests.unit.fakes import tiny_math_checkpoint

    model = tiny_math_checkpoint(tmp_path / "model")
    stage = EvalStage(
        domains=["retail_orders"],
        worlds=1,
        max_tasks=2,
        max_tokens=16,
        models=["base", "sft"],
        engine={"kind": "torch", "device": "cpu", "max_model_len": 4096},
    )
    out = tmp_path / "eval"
    out.mkdir()
    results = evaluate_models(stage, {"base": model, "sft": model}, out, Console(quiet=True))
    assert set(results) == {"base", "sft"} and results["base"] == results["sft"]  # same weights, greedy
    for name in ("base", "sft"):
        summary = json.loads((out / f"{name}.json").read_text())
        assert summary["tasks"] == 2 and "argument_copying" in summary and "turn_errors" in summary
    assert len((out / "base.jsonl").read_text().splitlines()) == 2
