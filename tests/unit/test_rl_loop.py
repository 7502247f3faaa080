"""The colocated RL loop's pure parts (batching, loss pass, metrics) and `rl_run` end to end on a
debug-sized model with a scripted engine: metrics rows, version stamps, checkpoint + resume, NaN stop."""

import json
import random
import time

import pytest
import torch
from pydantic import ValidationError

from agentfactory.model import K2Config, K2ForCausalLM, load_tokenizer, train_tokenizer
from agentfactory.model.chat import IM_END, render_assistant
from agentfactory.model.tokenizer import save_tokenizer
from agentfactory.rl.batch import (
    TrainRow,
    collate_rows,
    length_batches,
    policy_update,
    reward_metrics,
    uniform_groups,
)
from agentfactory.rl.config import EnvSpec, RLConfig
from agentfactory.rl.engine import RolloutStopped
from agentfactory.rl.loop import RLLoop
from agentfactory.rl.loss import LossConfig
from agentfactory.rl.run import rl_run
from agentfactory.train.trainer import TrainingDiverged
from tests.unit.fakes import ScriptedEngine, tiny_math_checkpoint


def _row(group: str, reward: float, n: int = 3, p: int = 4, version: int = 0, seed: int = 0) -> TrainRow:
    rng = random.Random(seed)
    return TrainRow(
        prompt_ids=[rng.randrange(5, 60) for _ in range(p)],
        response_ids=[rng.randrange(5, 60) for _ in range(n)],
        logprobs=[-1.0] * n,
        versions=[version] * n,
        reward=reward,
        group=group,
        env="math",
        components={"correct": reward},
        metrics={"response_tokens": float(n)},
    )


def test_length_batches_sort_by_length_and_respect_both_caps():
    lengths = [50, 10, 300, 12, 11, 40, 900, 45]
    batches = list(length_batches(lengths, max_rows=3, max_tokens=120))
    # 10, 11, 12: the row cap; 40, 45 (+50 would pad to 150 > 120); rows over the cap go alone
    assert batches == [[1, 4, 3], [5, 7], [0], [2], [6]]
    assert list(length_batches([], 3, 120)) == []


def test_collate_aligns_targets_and_masks():
    r = _row("a", 1.0, n=3, p=4, version=2)
    r.versions = [1, 2, 2]
    t = collate_rows([r, _row("b", 0.0, n=1, p=2)], pad_id=0, version=2)
    seq = r.prompt_ids + r.response_ids
    assert t["ids"][0].tolist() == seq[:-1]
    assert t["targets"][0].tolist() == seq[1:]
    assert t["mask"][0].tolist() == [0, 0, 0, 1, 1, 1]  # targets 3..5 are the response
    assert t["fresh"][0].tolist() == [0, 0, 0, 0, 1, 1]
    assert t["mask"][1].tolist() == [0, 1, 0, 0, 0, 0]


def test_collate_masks_environment_tokens_of_multi_turn_rows():
    r = _row("a", 1.0, n=6, p=3, version=2)
    r.mask, r.logprobs = [1, 1, 0, 0, 1, 1], [-0.5, -0.5, 0.0, 0.0, -0.5, -0.5]
    t = collate_rows([r, _row("b", 0.0, n=2, p=2, version=2)], pad_id=0, version=2)
    assert t["mask"][0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]  # targets 2..7 are the response
    assert t["fresh"][0].tolist() == t["mask"][0].tolist()  # env tokens are neither fresh nor stale
    assert t["behavior"][0].tolist() == [0, 0, -0.5, -0.5, 0, 0, -0.5, -0.5]
    assert t["mask"][1].tolist() == [0, 1, 1, 0, 0, 0, 0, 0]  # no mask: every response token
    model = _tiny_model()
    stats = policy_update(model, [r], LossConfig(), pad_id=0, version=2, micro_batch_size=4)
    assert stats["tokens/train"] == 4 and stats["tokens/stale"] == 0


def _tiny_model(vocab: int = 64) -> K2ForCausalLM:
    torch.manual_seed(0)
    cfg = K2Config.preset("debug", vocab_size=vocab, num_hidden_layers=2, first_k_dense_replace=1)
    return K2ForCausalLM(cfg)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_micro_batching_gives_the_full_batch_gradient():
    # lengths vary within groups, so length-sorted micro-batches cut across groups (and K differs)
    rows = [_row(g, float(i % 3) / 2, n=2 + (i * 5) % 7, seed=i) for i, g in enumerate("aaabbccddd")]
    assert sorted(range(10), key=lambda i: len(rows[i].response_ids))[:3] == [0, 7, 3]  # groups a, d, b
    cfg = LossConfig(tau=0.1, tis_cap=None)
    full, by_rows, by_tokens = _tiny_model(), _tiny_model(), _tiny_model()
    ref = policy_update(full, rows, cfg, pad_id=0, version=0, micro_batch_size=100)
    policy_update(by_rows, rows, cfg, pad_id=0, version=0, micro_batch_size=3)
    got = policy_update(
        by_tokens, rows, cfg, pad_id=0, version=0, micro_batch_size=100, micro_batch_tokens=20
    )
    for model in (by_rows, by_tokens):
        torch.testing.assert_close(_grads(full), _grads(model), rtol=1e-4, atol=1e-6)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5) and ref["loss"] > 0


def test_equal_rewards_give_no_gradient_and_mismatch_is_measured():
    model = _tiny_model()
    rows = [_row("a", 0.5, seed=i) for i in range(4)]
    stats = policy_update(model, rows, LossConfig(tis_cap=None), pad_id=0, version=0, micro_batch_size=8)
    assert float(_grads(model).abs().max()) == 0.0
    # the engine claimed logprob -1.0 for every token; the model's own differ: mismatch > 0, all fresh
    assert stats["mismatch/abs_mean"] > 0 and stats["tokens/stale"] == 0 and stats["tokens/train"] == 12


def test_uniform_groups_cost_less_and_change_nothing():
    # a, c carry signal; b, d are flat (one all-solved, one all-failed); micro-batches mix them
    rewards = {"a": (0.0, 1.0), "b": (1.0, 1.0), "c": (0.2, 0.7), "d": (0.0, 0.0)}
    rows = [
        _row(g, r, n=3 + i, seed=i)
        for i, (g, r) in enumerate((g, r) for g, rs in rewards.items() for r in rs)
    ]
    cfg = LossConfig(tau=0.1)
    models, stats = {}, {}
    for mode in ("train", "measure", "skip"):
        models[mode] = _tiny_model()
        stats[mode] = policy_update(
            models[mode], rows, cfg, pad_id=0, version=0, micro_batch_size=4, uniform=mode
        )
    for mode in ("measure", "skip"):  # the same gradient: flat groups contribute exactly zero
        torch.testing.assert_close(_grads(models[mode]), _grads(models["train"]), rtol=1e-5, atol=1e-8)
    assert stats["measure"] == pytest.approx(stats["train"], rel=1e-6, abs=1e-9)  # same statistics
    assert stats["skip"]["tokens/train"] == 3 + 4 + 7 + 8 < stats["train"]["tokens/train"]
    assert stats["skip"]["loss"] == pytest.approx(stats["train"]["loss"], rel=1e-5)
    # nothing but flat groups: no pass at all, yet every parameter has a (zero) gradient to step with
    model = _tiny_model()
    model.set_track_max_logits()
    policy_update(
        model,
        [r for r in rows if r.group in "bd"],
        cfg,
        pad_id=0,
        version=0,
        micro_batch_size=4,
        uniform="skip",
    )
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and float(g.abs().max()) == 0 for g in grads)
    assert all(m is None for m in model.pop_max_logits())  # no forward ran


def test_uniform_groups_are_those_with_all_equal_rewards():
    rows = [_row("a", 0.0), _row("a", 1.0), _row("b", 0.5), _row("b", 0.5), _row("c", 1.0)]
    assert uniform_groups(rows) == 2  # b (equal rewards) and c (one response: its own baseline)
    assert uniform_groups(rows[:2]) == 0 and uniform_groups([]) == 0


def test_reward_metrics_by_env_and_component():
    rows = [_row("a", 1.0), _row("a", 0.0), _row("b", 1.0)]
    rows[2].env = "rg.chain_sum"
    m = reward_metrics(rows)
    assert m["reward/math"] == 0.5 and m["reward/rg.chain_sum"] == 1.0
    assert m["component/correct"] == pytest.approx(2 / 3) and m["metric/response_tokens"] == 3.0


# ---------------------------------------------------------------------------------- rl_run


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return tiny_math_checkpoint(tmp_path_factory.mktemp("rl-loop") / "model")


def _config(model, out, **kw) -> RLConfig:
    base = dict(
        model=str(model),
        envs=[EnvSpec(kind="math", config={"families": ["arithmetic"], "difficulty": 1})],
        iterations=3,
        prompts_per_iteration=3,
        samples_per_prompt=2,
        micro_batch_size=4,
        critic={"enabled": False},
        output_dir=str(out),
        checkpoint_every=1,
        progress=False,
    )
    return RLConfig(**{**base, **kw})


def _engine():
    def reply(request):
        q = request.messages[-1].content if request.messages else ""
        if "Compute" not in q:
            return "\\boxed{0}"
        expr = q.split("Compute ")[1].rstrip(".")
        value = eval(expr)  # our own generated digits and operators
        first = int(expr.split(" ")[0])
        return f"\\boxed{{{value if first % 2 == 0 else value + 1}}}"

    return ScriptedEngine(reply)


def test_rl_run_metrics_versions_checkpoint_and_resume(tiny_checkpoint, tmp_path):
    engine = _engine()
    cfg = _config(tiny_checkpoint, tmp_path / "run", iterations=2)
    result = rl_run(cfg, engine=engine)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    # the scripted engine answers a prompt the same way every time: every group is uniform
    assert rows[0]["groups/uniform"] == rows[0]["groups/trained"] > 0
    for key in ("reward/math", "component/correct", "time/rollout", "time/train", "time/sync", "kl",
                "mismatch/abs_mean", "staleness/max", "clipped_heads", "tokens/generated"):  # fmt: skip
        assert key in rows[0], key
    # a shared engine got our weights first (version 1), then one push per iteration
    assert engine.policy_version == 3 and rows[-1]["policy_version"] == 3
    assert (result.model_dir / "config.json").exists() and (result.model_dir / "tokenizer.json").exists()
    ckpt = json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())
    assert ckpt["iteration"] == 2 and ckpt["version"] == 3

    # "kill" after iteration 2 and continue to 4: rows 1..4, weights continue from the checkpoint
    before = K2ForCausalLM.from_pretrained(result.model_dir).state_dict()
    resumed = RLLoop(_config(tiny_checkpoint, tmp_path / "run", iterations=4), _engine())
    assert resumed.resume() and resumed.iteration == 2 and resumed.version == 3
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    result = rl_run(_config(tiny_checkpoint, tmp_path / "run", iterations=4), engine=_engine())
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    cfg = _config(tiny_checkpoint, tmp_path / "nan", iterations=3)
    loop = RLLoop(cfg, _engine())
    loop.resume()
    loop.step()
    loop.save()
    saved = {k: v.clone() for k, v in loop.model.state_dict().items()}
    import agentfactory.rl.loop as loop_mod

    monkeypatch.setattr(loop_mod, "policy_update", lambda *a, **k: {"loss": float("nan")})
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint.*iteration 1"):
        loop.step()
    for k, v in loop.model.state_dict().items():  # no update was applied
        torch.testing.assert_close(v, saved[k])


class PieceEngine(ScriptedEngine):
    """Answers a prompt with 1 or `length` copies of `token` ("x"), honouring max_tokens: the tokens
    already generated are the trailing `token`s of a continued prompt, so a resumed rollout picks up
    there (the tokenizer's last merge, "Compute": no chat prompt ends with it)."""

    def __init__(self, token: int, length: int = 3):
        super().__init__(lambda r: "")
        self.token, self.length = token, length

    def generate(self, requests):
        from agentfactory.llm.base import Completion

        out = []
        for r in requests:
            done = 0
            for t in reversed(r.prompt_ids):
                if t != self.token:
                    break
                done += 1
            prompt = r.prompt_ids[: len(r.prompt_ids) - done]
            length = self.length if sum(prompt) % 2 else 1  # a long tail: some prompts need 1 token
            n = min(r.params.max_tokens, length - done)
            finish = "stop" if done + n >= length else "length"
            c = Completion(text="x" * n, token_ids=[self.token] * n, logprobs=[-0.5] * n, finish_reason=finish,
                           policy_version=self.policy_version)  # fmt: skip
            out.append([c] * r.params.n)
        return out


def test_partial_rollouts_carry_long_responses(tiny_checkpoint, tmp_path):
    """With 1-token segments a 3-token response needs 3 iterations: its group carries over while
    1-token groups train and bump the version, so its tokens come from several versions."""
    cfg = _config(
        tiny_checkpoint,
        tmp_path / "partial",
        iterations=4,
        rollout={"segment_tokens": 1, "iteration_tokens": 64, "max_staleness": 8},
    )
    result = rl_run(cfg, engine=PieceEngine(len(load_tokenizer(tiny_checkpoint)) - 1))
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert all(r["rollouts/carried"] + r["rows"] > 0 for r in rows)
    assert any(r["rollouts/carried"] > 0 for r in rows) and any(r["rollouts/resumed"] > 0 for r in rows)
    assert 0 < max(r["staleness/max"] for r in rows) <= 8
    assert max(r["tokens/stale"] for r in rows if "tokens/stale" in r) > 0


def test_torch_engine_rolls_out_with_the_trainers_own_logprobs(tiny_checkpoint, tmp_path):
    """The colocated loop on the real TorchEngine (engine.kind: torch), partial rollouts resumed
    under new weights: the engine's logprobs are the trainer's forward (mismatch ≈ 0, where vLLM
    shows ≈ 2e-3), stale tokens are still measured, and each sync moves the engine's version."""
    cfg = _config(
        tiny_checkpoint,
        tmp_path / "torch",
        iterations=4,
        engine={"kind": "torch", "device": "cpu", "max_model_len": 256},
        budgets={"budgets": {"math": 12}},  # two 6-token segments: every response is resumed once
        rollout={"segment_tokens": 6, "iteration_tokens": 200, "max_staleness": 4},
        checkpoint_every=0,
        save_model=False,
    )
    result = rl_run(cfg)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["policy_version"] for r in rows] == [0, 1, 1, 2]
    assert [r["rollouts/resumed"] for r in rows] == [0, 6, 0, 6]
    trained = [r for r in rows if r["rows"]]
    assert [r["rollouts/multi_segment"] for r in trained] == [6, 6]
    assert all(r["tokens/train"] == 72 and r["mismatch/abs_mean"] < 1e-5 for r in trained)
    with pytest.raises(ValidationError, match="workers"):
        RLConfig(model="m", envs=[EnvSpec(kind="math")], engine={"kind": "torch", "workers": 2})


def test_pipeline_config_loads_and_rejects_what_the_loop_cannot_run():
    from pathlib import Path

    from agentfactory.config import load_config

    root = Path(__file__).parents[2]
    cfg = load_config(root / "pipelines" / "rl.yaml", RLConfig)
    assert {e.kind for e in cfg.envs} == {"math", "reasoning_gym", "rubric"} and cfg.rollout.enabled
    assert RLConfig(model="m", envs=[EnvSpec(kind="tool_use"), EnvSpec(kind="math")])  # multi-turn too
    with pytest.raises(ValidationError, match="critic"):
        RLConfig(model="m", envs=[EnvSpec(kind="rubric")], critic={"enabled": False})
    with pytest.raises(ValidationError, match="ptx"):
        RLConfig(model="m", envs=[EnvSpec(kind="math")], loss={"ptx_weight": 0.1})
    from agentfactory import rl

    assert rl.rl_run is rl_run and rl.RLConfig is RLConfig


def test_ptx_term_is_mixed_in(tiny_checkpoint, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Compute {i} + 1."}, {"role": "assistant", "content": f"\\boxed{{{i + 1}}}"}]}
        for i in range(6)
    ]  # fmt: skip
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _config(
        tiny_checkpoint,
        tmp_path / "ptx",
        ptx={"paths": [str(tmp_path / "sft.jsonl")], "seq_len": 64},
        ptx_batch_size=4,
        loss={"ptx_weight": 0.5},
    )
    loop = RLLoop(cfg, _engine())
    loop.resume()
    row = loop.step()
    assert row["ptx_loss"] > 0 and row["loss"] == pytest.approx(row["rl_loss"] + 0.5 * row["ptx_loss"])
    assert loop.ptx_seen == 4


# ----------------------------------------------------------------------------- multi-turn envs


TOOL_USE = {"world_seeds": [100], "agents": {"distractor_fraction": 0.0, "cross_domain": 0.0}}


@pytest.fixture(scope="module")
def tool_checkpoint(tmp_path_factory):
    """A debug model whose tokenizer knows the tool-use prompts (~4x fewer tokens than the math one's:
    the rows are whole episodes, and their length sets the test's time)."""
    from agentfactory.model.chat import render
    from agentfactory.rl.envs import ToolUseEnv, ToolUseEnvConfig

    env = ToolUseEnv(ToolUseEnvConfig.model_validate(TOOL_USE))
    tasks = [env.reset(s) for s in range(40)]
    texts = [render([m.to_openai() for m in t.prompt], [x.to_openai() for x in t.tools]) for t in tasks]
    texts += [f"Compute {i} + {j}. \\boxed{{{i + j}}}" for i in range(10) for j in range(10)]
    tok = train_tokenizer(texts, 1024)
    torch.manual_seed(0)
    cfg = K2Config.preset("debug", vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=3)
    path = tmp_path_factory.mktemp("rl-tools") / "model"
    K2ForCausalLM(cfg).save_pretrained(path)
    save_tokenizer(tok, path)
    return path


def _tool_engine(tokenizer) -> ScriptedEngine:
    """Token-in-token-out replies: math prompts get a boxed guess; a tool-use episode asks for the
    email (the user answers), calls its first declared tool (a result comes back), then finishes."""

    def reply(request):
        text = engine.prompt_text(request)
        if "tool_declare" not in text:
            return "\\boxed{0}"
        turn = text.count("<|im_assistant|>") - 1
        tools = json.loads(text.split("tool_declare<|im_middle|>")[1].split("<|im_end|>")[0])
        call = {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": tools[0]["function"]["name"], "arguments": "{}"}}
        ]}  # fmt: skip
        return ["Could you tell me your email?", render_assistant(call)[: -len(IM_END)], "All done."][turn]

    engine = ScriptedEngine(reply, tokenizer=tokenizer)
    return engine


def _capture_trained_rows(monkeypatch) -> list[list[TrainRow]]:
    """The rows of every `RLLoop.train` call, appended as the loop trains."""
    trained: list[list[TrainRow]] = []
    train = RLLoop.train
    monkeypatch.setattr(RLLoop, "train", lambda self, rows: trained.append(rows) or train(self, rows))
    return trained


def test_loop_trains_tool_use_episodes_beside_single_turn_groups(tool_checkpoint, tmp_path, monkeypatch):
    trained = _capture_trained_rows(monkeypatch)
    cfg = _config(
        tool_checkpoint,
        tmp_path / "tools",
        iterations=1,
        prompts_per_iteration=2,
        envs=[
            EnvSpec(kind="tool_use", weight=2, config=TOOL_USE),
            EnvSpec(kind="math", config={"families": ["arithmetic"], "difficulty": 1}),
        ],
    )
    tok = load_tokenizer(tool_checkpoint)
    result = rl_run(cfg, engine=_tool_engine(tok))
    metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    (m,) = metrics
    assert m["episodes/groups"] == 1 and m["groups/added"] == 2 and "reward/math" in m
    assert (
        m["episodes/turns_mean"] == 3 and m["episodes/tool_calls_mean"] == 1 and m["episodes/env_tokens"] > 0
    )
    assert "reward/tool_use" in m and "component/rubric" in m and "metric/correct" in m

    rows = [r for batch in trained for r in batch if r.env == "tool_use"]
    im_end = tok.convert_tokens_to_ids(IM_END)
    for r in rows:
        assert len(r.mask) == len(r.response_ids) == len(r.logprobs) == len(r.versions)
        assert 0 in r.mask and r.mask[-1] == 1 and r.response_ids[-1] == im_end
        assert all(lp == 0.0 for lp, k in zip(r.logprobs, r.mask, strict=True) if not k)
        # three sampled turns, each ending in <|im_end|>: the policy's tokens, nothing rendered
        assert sum(1 for t, k in zip(r.response_ids, r.mask, strict=True) if k and t == im_end) == 3
    sampled = sum(sum(r.mask or [1] * len(r.response_ids)) for r in trained[0])
    assert m["tokens/train"] == sampled  # environment tokens get no loss

    # resume: tool-use groups finish within their iteration, the checkpoint needs nothing more
    result = rl_run(cfg.model_copy(update={"iterations": 2}), engine=_tool_engine(tok))
    metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2] and result.policy_version == 3


def test_closed_loop_critic_judges_multi_turn_episodes_by_their_calls(tool_checkpoint, tmp_path, monkeypatch):
    """A tool-use group whose episodes' outcomes differ feeds the closed loop: the critic reads each
    episode's calls and results (not only its last words) and its judgments become training rows."""
    from agentfactory.records import RewardBreakdown
    from agentfactory.rl.envs import ToolUseEnv

    def alternate(self, task, trajectories):  # verifier outcomes 1, 0, 1, ... within the group
        return [
            RewardBreakdown.combine(
                {"rubric": float(i % 2 == 0), "correct": float(i % 2 == 0)}, {"rubric": 1}
            )
            for i in range(len(trajectories))
        ]

    monkeypatch.setattr(ToolUseEnv, "score_group", alternate)
    trained = _capture_trained_rows(monkeypatch)
    cfg = _config(
        tool_checkpoint,
        tmp_path / "closed",
        iterations=1,
        prompts_per_iteration=1,
        envs=[EnvSpec(kind="tool_use", config=TOOL_USE)],
        critic={"enabled": True, "closed_loop_groups": 1},
    )
    tok = load_tokenizer(tool_checkpoint)
    engine = _tool_engine(tok)
    policy = engine.reply  # the critic's requests are chat messages; it always prefers the first
    engine.reply = lambda r: "Verdict: A" if r.prompt_ids is None else policy(r)
    result = rl_run(cfg, engine=engine)
    (m,) = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    critic = [r for r in trained[0] if r.env == "critic"]
    # K = 2 episodes with outcomes (1, 0): one pair judged in both orders; "A" agrees only when
    # episode 0 is shown first
    assert m["critic/rows"] == len(critic) == 2 and sorted(r.reward for r in critic) == [0.0, 1.0]
    assert m["critic/agreement"] == 0.5
    prompt = tok.decode(critic[0].prompt_ids)
    tool = prompt.split("ASSISTANT calls ")[1].split("(")[0]
    assert tool and "TOOL:" in prompt and "All done." in prompt  # the episode, not just its last reply


def test_critic_reads_single_replies_whole_and_episodes_as_transcripts():
    from agentfactory.records import Message, ToolCall, Trajectory
    from agentfactory.rl.critic import response_text
    from agentfactory.rl.envs.base import EnvTask

    prompt = [Message(role="system", content="policy"), Message(role="user", content="Hi")]
    task = EnvTask(id="t", env="e", kind="chat", prompt=prompt)
    single = Trajectory(task_id="t", messages=[*prompt, Message(role="assistant", content="Hello!")])
    assert response_text(task, single) == "Hello!"
    call = ToolCall(id="c", name="find_order", arguments={"order_id": "ORD-1"})
    episode = Trajectory(
        task_id="t",
        messages=[
            *prompt,
            Message(role="assistant", content="", tool_calls=[call]),
            Message(role="tool", content='{"status": "shipped"}', tool_call_id="c"),
            Message(role="assistant", content="It has shipped."),
        ],
    )
    text = response_text(task, episode)
    assert "find_order" in text and "ORD-1" in text and "shipped" in text and "policy" not in text
    assert response_text(task, episode, limit=20).startswith("...")


def _traced(fn, name: str, events: list):
    """`fn`, recording (name, iteration of a rollout, start, end) of every call."""

    def call(*args):
        start = time.perf_counter()
        out = fn(*args)
        events.append((name, args[0] if name == "rollout" else None, start, time.perf_counter()))
        return out

    return call


def test_overlap_rolls_out_the_next_iteration_while_training(tiny_checkpoint, tmp_path):
    def run(out, overlap: bool, **kw):
        engine, events = _engine(), []
        loop = RLLoop(_config(tiny_checkpoint, out, overlap=overlap, **kw), engine)
        for name in ("rollout", "train"):
            setattr(loop, name, _traced(getattr(loop, name), name, events))
        loop.resume()
        rows = []
        while loop.iteration < loop.config.iterations:
            rows.append(loop.step())
        return rows, events, [r.prompt_ids or r.messages for r in engine.requests], loop

    seq_rows, _, seq_prompts, _ = run(tmp_path / "seq", False, iterations=4, checkpoint_every=0)
    rows, events, prompts, loop = run(tmp_path / "ovl", True, iterations=4, checkpoint_every=0)
    assert prompts == seq_prompts  # the same tasks, drawn by iteration, in the same order
    rollouts = {k: (t0, t1) for name, k, t0, t1 in events if name == "rollout"}
    trains = [(t0, t1) for name, _, t0, t1 in events if name == "train"]
    assert sorted(rollouts) == [0, 1, 2, 3] and len(trains) == 4
    for k in range(3):  # rollout k+1 started before train k finished: they ran side by side
        assert rollouts[k + 1][0] < trains[k][1]
    assert "time/overlap_wait" in rows[0] and "time/overlap_wait" not in rows[-1]  # the end: no prefetch
    # trained one iteration later than sampled: every token one version stale (none without overlap)
    assert rows[0]["tokens/stale"] == 0 and all(r["tokens/stale"] == r["tokens/train"] > 0 for r in rows[1:])
    assert all(r["tokens/stale"] == 0 for r in seq_rows)
    assert [r["policy_version"] for r in rows] == [r["policy_version"] for r in seq_rows] == [2, 3, 4, 5]
    assert loop.prefetched is None

    # a checkpoint keeps the prefetched rollout: the resumed run trains on exactly those rows
    out = tmp_path / "ck"
    first = RLLoop(_config(tiny_checkpoint, out, overlap=True, iterations=4, checkpoint_every=2), _engine())
    first.resume()
    for _ in range(2):
        first.step()
    first.save()
    assert first.prefetched is not None and first.prefetched.rows
    resumed = RLLoop(_config(tiny_checkpoint, out, overlap=True, iterations=4, checkpoint_every=2), _engine())
    assert resumed.resume() and resumed.iteration == 2
    assert resumed.prefetched.rows == first.prefetched.rows
    assert resumed.prefetched.stats == first.prefetched.stats
    assert [r["iteration"] for r in (resumed.step(), resumed.step())] == [3, 4]
    assert resumed.prefetched is None  # the last iteration prefetches nothing


def test_overlap_stops_the_prefetch_when_training_is_interrupted(tiny_checkpoint, tmp_path):
    """Ctrl-C during training ends the rollout beside it at its next engine call, the critic's
    judgments included: the user does not wait out the rest of the rollout."""
    critic = {"enabled": True, "closed_loop_groups": 1}
    config = _config(tiny_checkpoint, tmp_path, overlap=True, iterations=3, checkpoint_every=0, critic=critic)
    loop = RLLoop(config, _engine())
    loop.resume()
    real_rollout, calls, ended = loop.rollout, [], []

    def rollout(iteration):  # the prefetch (iteration 1): a rollout far longer than the training step
        if iteration == 0:
            return real_rollout(iteration)
        try:
            for _ in range(20_000):
                calls.append(loop.critic.engine.generate([]))  # the critic judges on the loop's engine
                time.sleep(0.001)
        except RolloutStopped:
            ended.append("stopped")
            raise
        ended.append("ran to the end")

    def train(rows):
        while len(calls) < 3:  # the prefetch is under way
            time.sleep(0.001)
        raise KeyboardInterrupt

    loop.rollout, loop.train = rollout, train
    with pytest.raises(KeyboardInterrupt):
        loop.step()
    assert ended == ["stopped"] and len(calls) < 20_000
    assert loop.iteration == 0 and loop.prefetched is None  # nothing recorded: resume redoes it
