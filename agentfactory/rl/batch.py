"""From scored rollouts to one K1.5 update: training rows, padded micro-batches, the loss pass.

A `TrainRow` is one response as the trainer sees it: the exact prompt ids the engine continued
from, the sampled ids, the engine's logprob and policy version of each sampled token, its scalar
reward and its baseline group (the prompt; closed-loop critic judgments form a group per prompt).
Nothing is re-tokenized: the rows carry the engine's ids, so the trainer scores exactly the tokens
that were sampled. A multi-turn episode is one row whose response is everything after the first
prompt (sampled turns and the environment turns between them, `synth.tito`); its `mask` keeps the
environment tokens out of the loss and the mismatch statistics (single-turn rows: all ones).

`policy_update` runs one optimizer step's worth of forward/backward. Each row's advantage and
weight in the loss come from its whole group up front (`k1p5_row_terms`), so the loss is a sum over
rows and micro-batches need not keep groups whole: rows go by length, so a pass pads short responses
to similar ones rather than to their group's longest (long-tailed episode lengths otherwise make
padding ≈ 40 % of the compute), and a token cap bounds each pass's memory. The accumulated gradient
equals the full batch's. There is one update per iteration, so π_old (the iteration's starting weights)
is the detached π_θ of the same forward: the log-ratio is 0 in value and the gradient is the
mean-baseline policy gradient, with no extra forward pass. The same forward gives the
train–inference mismatch: trainer logprobs vs the engine's sampling logprobs on the same tokens,
split into tokens of the current version (pure numerics: kernels, dtype) and stale tokens (sampled
by older weights, partial rollouts).

A group whose rewards are all equal (all solved, all failed) has zero advantage, so its gradient is
exactly zero at θ = θ_old; `uniform` says what its rows cost: `train` (forward + backward, the
reference), `measure` (forward only, without autograd: the same update and the same mismatch/KL/
QK-Clip/router statistics for ≈ 1/3 of the compute) or `skip` (nothing: DAPO's dynamic sampling
drops them too; the statistics then cover the trained rows only). Whatever the mode, the optimizer
step is the same: parameters the skipped rows would have reached get a zero gradient, so Muon's
momentum and weight decay run as they would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from agentfactory.records import Trajectory
from agentfactory.rl.loss import (
    LossConfig,
    k1p5_row_loss,
    k1p5_row_terms,
    ptx_loss,
    total_loss,
    truncated_is_weights,
)


@dataclass
class TrainRow:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # engine (behaviour policy) logprob of each response token
    versions: list[int]  # policy version that sampled each response token
    reward: float
    group: str
    env: str
    components: dict[str, float] = field(default_factory=dict)  # weighted reward components
    metrics: dict[str, float] = field(default_factory=dict)  # weight-0 components (lengths, rates)
    mask: list[int] | None = None  # per response token: 1 sampled by the policy, 0 env turn; None: all 1


def critic_row(tokenizer: Any, sample: Trajectory) -> TrainRow:
    """A closed-loop critic judgment (`Critic.training_samples`) as a row: its judge prompt, rendered
    as the engine rendered it, and the judgment's sampled ids."""
    from agentfactory.model.chat import encode

    messages = [m.to_openai() for m in sample.messages[:-1]]
    ids, reward = list(sample.token_ids or []), sample.reward
    assert reward is not None  # agreement samples are always scored
    return TrainRow(
        prompt_ids=encode(tokenizer, messages, None, add_generation_prompt=True),
        response_ids=ids,
        logprobs=list(sample.logprobs or [0.0] * len(ids)),
        versions=[sample.policy_version] * len(ids),
        reward=reward.total,
        group=str(sample.meta["group"]),
        env="critic",
        components={"agreement": reward.components["agreement"]},
    )


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices of rows in micro-batches of similar length: ascending, each pass at most `max_rows` rows
    and `max_tokens` padded tokens (rows × its longest; a row longer than that goes alone)."""
    batch: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batch and (len(batch) >= max_rows or (len(batch) + 1) * lengths[i] > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def flat_groups(rows: Sequence[TrainRow]) -> set[str]:
    """The groups whose rewards are all equal: zero advantage, so no gradient (at θ = θ_old the K1.5
    gradient is Σ_i (r_i − r̄) ∇ log π)."""
    rewards: dict[str, list[float]] = {}
    for r in rows:
        rewards.setdefault(r.group, []).append(r.reward)
    return {g for g, v in rewards.items() if max(v) - min(v) <= 1e-9}


def uniform_groups(rows: Sequence[TrainRow]) -> int:
    """How many groups have all-equal rewards. Many of them mean RL sees too few prompts of the right
    difficulty: all solved or all failed."""
    return len(flat_groups(rows))


def collate_rows(rows: Sequence[TrainRow], pad_id: int, version: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a micro-batch; position t of `targets` is predicted by input t.

    ids_BT:       prompt + response[:-1] (the model input)
    targets_BT:   the next token at every input position
    mask_BT:      1 where the target is a response token the policy sampled (env turns: 0)
    behavior_BT:  the engine's logprob of that target (0 elsewhere)
    fresh_BT:     1 where the target was sampled by `version` (the weights being trained), within mask
    """
    length = max(len(r.prompt_ids) + len(r.response_ids) - 1 for r in rows)
    B = len(rows)
    ids = torch.full((B, length), pad_id, dtype=torch.long)
    targets = torch.full((B, length), pad_id, dtype=torch.long)
    mask = torch.zeros(B, length)
    behavior = torch.zeros(B, length)
    fresh = torch.zeros(B, length)
    for b, r in enumerate(rows):
        seq = r.prompt_ids + r.response_ids
        n, p = len(seq) - 1, len(r.prompt_ids) - 1  # first response token is the target at input p
        ids[b, :n] = torch.tensor(seq[:-1])
        targets[b, :n] = torch.tensor(seq[1:])
        k = len(r.response_ids)
        m = torch.tensor(r.mask[:k], dtype=torch.float32) if r.mask is not None else torch.ones(k)
        mask[b, p : p + k] = m
        behavior[b, p : p + k] = torch.tensor(r.logprobs[:k], dtype=torch.float32) * m
        fresh[b, p : p + k] = torch.tensor([float(v == version) for v in r.versions[:k]]) * m
    return {
        "ids": ids,
        "targets": targets,
        "mask": mask,
        "behavior": behavior,
        "fresh": fresh,
    }


def mismatch_stats(
    logp_BT: torch.Tensor, behavior_BT: torch.Tensor, mask_BT: torch.Tensor, fresh_BT: torch.Tensor
):
    """Sums for the train–inference mismatch: |Δlogprob| on fresh and stale tokens, their counts, the
    max |Δ| on fresh tokens, and the k3 KL(μ‖π) estimator's sum over all response tokens."""
    d_BT = (logp_BT.detach().float() - behavior_BT) * mask_BT
    stale_BT = mask_BT * (1 - fresh_BT)
    x_BT = d_BT  # log(π/μ) per token; k3 = exp(x) - 1 - x estimates KL(μ‖π) under μ's samples
    return {
        "fresh_abs": float((d_BT.abs() * fresh_BT).sum()),
        "fresh_n": float(fresh_BT.sum()),
        "fresh_max": float((d_BT.abs() * fresh_BT).max()) if fresh_BT.any() else 0.0,
        "stale_abs": float((d_BT.abs() * stale_BT).sum()),
        "stale_n": float(stale_BT.sum()),
        "kl_sum": float(((torch.exp(x_BT) - 1 - x_BT) * mask_BT).sum()),
        "n": float(mask_BT.sum()),
    }


def policy_update(
    model: torch.nn.Module,
    rows: Sequence[TrainRow],
    config: LossConfig,
    *,
    pad_id: int,
    version: int,
    micro_batch_size: int,
    micro_batch_tokens: int = 4096,
    ptx_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    autocast: Callable[[], object] | None = None,
    uniform: Literal["train", "measure", "skip"] = "measure",
) -> dict[str, float]:
    """Forward/backward of the K1.5 loss (+ PTX) over `rows`; gradients accumulate in `model`.

    Returns the step's statistics (loss, mismatch, KL). The caller clips, steps and zeroes.
    A non-finite loss is reported as `loss = nan` before any backward of it (the caller stops).
    `uniform`: what groups with all-equal rewards cost (module docstring).
    """
    from contextlib import nullcontext

    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    rl_loss_sum, ptx_sum = 0.0, 0.0
    names: dict[str, int] = {}
    group_B = torch.tensor([names.setdefault(r.group, len(names)) for r in rows], dtype=torch.long)
    adv_B, weight_B = k1p5_row_terms(torch.tensor([r.reward for r in rows]), group_B)
    flat = flat_groups(rows) if uniform != "train" else set()
    passes = [([i for i, r in enumerate(rows) if r.group not in flat], True)]
    if uniform == "measure":
        passes.append(([i for i, r in enumerate(rows) if r.group in flat], False))
    for part, grad in passes:
        lengths = [len(rows[i].prompt_ids) + len(rows[i].response_ids) for i in part]
        for mb in length_batches(lengths, micro_batch_size, micro_batch_tokens):
            idx = [part[j] for j in mb]
            t = {k: v.to(device) for k, v in collate_rows([rows[i] for i in idx], pad_id, version).items()}
            with autocast() if autocast else nullcontext(), torch.set_grad_enabled(grad):
                logits = model(t["ids"]).logits  # (B, T, V)
            logp = torch.log_softmax(logits.float(), -1).gather(-1, t["targets"].unsqueeze(-1)).squeeze(-1)
            weights = None
            if config.tis_cap is not None:  # π_old/μ per token: corrects stale and mismatched tokens
                weights = truncated_is_weights(logp.detach(), t["behavior"], t["mask"], config.tis_cap)
            adv, weight = adv_B[idx].to(device), weight_B[idx].to(device)
            loss, stats = k1p5_row_loss(logp, logp.detach(), adv, weight, t["mask"], config.tau, weights)
            if not math.isfinite(stats["loss"]):
                return {"loss": float("nan")}
            if grad:
                loss.backward()
            rl_loss_sum += stats["loss"]
            for k, v in mismatch_stats(logp, t["behavior"], t["mask"], t["fresh"]).items():
                totals[k] = max(totals.get(k, 0.0), v) if k == "fresh_max" else totals.get(k, 0.0) + v
    for ids, labels in ptx_batches:
        ids, labels = ids.to(device), labels.to(device)
        with autocast() if autocast else nullcontext():
            logits = model(ids[:, :-1]).logits
        labels = labels[:, 1:]
        ptx = ptx_loss(logits, labels, labels != -100) / len(ptx_batches)
        if not math.isfinite(float(ptx.detach())):
            return {"loss": float("nan")}
        (config.ptx_weight * ptx).backward()
        ptx_sum += float(ptx.detach())
    if flat:  # what the skipped backward would have given: zeros, so the optimizer steps the same
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    rl = torch.tensor(rl_loss_sum)
    _, parts = total_loss(rl, torch.tensor(ptx_sum) if ptx_batches else None, config)
    n = max(totals.get("n", 0.0), 1.0)
    return {
        "loss": rl_loss_sum + config.ptx_weight * ptx_sum,
        **parts,
        "kl": totals.get("kl_sum", 0.0) / n,
        "mismatch/abs_mean": totals.get("fresh_abs", 0.0) / max(totals.get("fresh_n", 0.0), 1.0),
        "mismatch/abs_max": totals.get("fresh_max", 0.0),
        "mismatch/stale_abs_mean": totals.get("stale_abs", 0.0) / max(totals.get("stale_n", 0.0), 1.0),
        "tokens/train": totals.get("n", 0.0),
        "tokens/stale": totals.get("stale_n", 0.0),
    }


def reward_metrics(rows: Sequence[TrainRow]) -> dict[str, float]:
    """`reward/<env>` (mean reward per env), `component/<name>` (mean of each weighted component)
    and `metric/<name>` (weight-0 components: kept apart so token counts do not share the reward
    plot's axis)."""
    by_env: dict[str, list[float]] = {}
    comps: dict[str, list[float]] = {}
    for r in rows:
        by_env.setdefault(r.env, []).append(r.reward)
        for prefix, values in (("component", r.components), ("metric", r.metrics)):
            for k, v in values.items():
                comps.setdefault(f"{prefix}/{k}", []).append(v)
    out = {f"reward/{e}": sum(v) / len(v) for e, v in by_env.items()}
    out.update({k: sum(v) / len(v) for k, v in comps.items()})
    if rows:
        out["reward_mean"] = sum(r.reward for r in rows) / len(rows)
    return out
