"""The colocated RL loop (DESIGN §9, Kimi K1.5 §2.6, K2 §3.2.2): trainer and vLLM on the same weights.

One process on the CPU holds the trainer's model + MuonClip optimizer and a `VLLMEngine` serving
the same weights. Each iteration:

  1. **rollout** – top the partial-rollout buffer up to `prompts_per_iteration` groups with tasks
     drawn from the env mixture (seeded by the iteration, so a resumed run draws the same tasks),
     then generate one iteration's segments under the token budget: short responses finish, long
     ones carry over and resume next iteration under the new weights (staleness bounded, logged).
     Multi-turn (tool-use) groups drawn this iteration are instead played whole, their episodes in
     lockstep, token-in-token-out, and never carried over: resuming one would mean checkpointing
     its tool world and user simulator, its length is already bounded by turns x per-turn budget,
     and one policy version plays it all (`rl.episodes`);
  2. **reward** – every group whose members all finished is scored by its env (verifiers, sandbox,
     or the self-critique win rate for RubricEnv); on a few verifiable groups the critic also
     judges pairs with different outcomes and those judgments become training rows rewarded for
     agreeing with the verifier (the closed loop);
  3. **train** – the K1.5 loss over the groups (+ PTX on SFT data), one MuonClip step, QK-Clip,
     the routers' aux-free bias step. A non-finite loss stops the run before the update: the last
     checkpoint on disk is the last good one;
  4. **sync** – the new weights are pushed into the running engine in place (`update_weights`) and
     tagged with the next policy version; on GPU the engine sleeps during (3) and wakes for (4).

With `overlap`, (1–2) of the next iteration run in a worker thread on the engine's current weights
while (3) trains, and (4) waits for both: one-step off-policy, as in async RL systems (its tokens are
one version stale when trained, which `loss.tis_cap` corrects and `tokens/stale` shows). The engine
core is its own process, so on the CPU generation and training use different cores; the rollout
never touches the trainer's model. A checkpoint holds the finished prefetched rollout (its rows),
so a resumed run trains on exactly what it would have; the last iteration prefetches nothing.

`rl_run` (rl/run.py) drives the loop and appends one row per iteration to
`<output_dir>/metrics.jsonl`: `reward/<env>`, `component/<name>`, `time/rollout|train|sync`, `kl`,
`mismatch/*` (trainer vs engine logprobs of the same tokens), `staleness/*`, `episodes/*` (tool
use), `clipped_heads`, `tokens/*`, `engine/restarts` (a dead engine core is restarted and given the
trainer's weights: rl/engine.py). Checkpoints (model, optimizer, buffer, iteration, version, RNG) make
a killed run continue where it stopped; the final policy is saved as a HF checkpoint + tokenizer in
`<output_dir>/model` for evaluation on vLLM.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from agentfactory.devices import resolve_dtype
from agentfactory.llm.base import Engine, SamplingParams
from agentfactory.rl.batch import TrainRow, critic_row, policy_update, reward_metrics, uniform_groups
from agentfactory.rl.buffer import PartialRolloutBuffer, Rollout
from agentfactory.rl.config import RLConfig, build_env
from agentfactory.rl.engine import RecoveringEngine, start_engine
from agentfactory.rl.envs.base import EnvTask
from agentfactory.rl.envs.mixture import EnvMixture
from agentfactory.rl.episodes import Scored, is_multi_turn, rollout_episode_groups


@dataclass
class RolloutPhase:
    """One iteration's scored rollouts: training rows and the metrics they give."""

    rows: list[TrainRow]
    stats: dict[str, Any]


class RLLoop:
    """State of one colocated run: model, optimizer, engine, envs, buffer, counters."""

    def __init__(self, config: RLConfig, engine: Engine | None = None, console: Console | None = None):
        from agentfactory.model import K2ForCausalLM, load_tokenizer
        from agentfactory.optim import build_optimizer
        from agentfactory.rl.critic import Critic

        self.config, self.console = config, console or Console(stderr=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.out = Path(config.output_dir)
        self.metrics_path = self.out / "metrics.jsonl"
        self.tokenizer = load_tokenizer(config.tokenizer or config.model)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.device = torch.device(
            "cuda"
            if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
            else "cpu"
        )
        self.model = K2ForCausalLM.from_pretrained(config.model, device=self.device)
        self.model.train()
        self.model.set_track_max_logits(True)
        if config.compile:
            self.model.compile_layers()
        self.opt = build_optimizer(self.model, config.optimizer)
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
            if resolve_dtype(config.dtype, self.device) == "bfloat16"
            else None
        )
        self.owns_engine = engine is None
        raw = engine if engine is not None else start_engine(config)
        # after an engine core crash: restart it, push our weights back at our version, retry
        self.weights_lock = threading.Lock()  # a restore (rollout thread) never reads a half-applied step

        def restore() -> None:
            with self.weights_lock:
                raw.update_weights(self.model.state_dict(), self.version)

        self.stop = threading.Event()  # set when training fails beside a prefetched rollout
        self.engine = RecoveringEngine(raw, restore, self.console, self.stop)
        kinds = {e.kind for e in config.envs}
        use_critic = config.critic.enabled and ("rubric" in kinds or config.critic.closed_loop_groups > 0)
        self.critic = Critic(self.engine, config.critic.config) if use_critic else None
        envs = [build_env(spec, self.critic, self.tokenizer) for spec in config.envs]
        self.mixture = EnvMixture(envs, {e.name: s.weight for e, s in zip(envs, config.envs, strict=True)})
        self.buffer = PartialRolloutBuffer(config.rollout)
        self.ptx = None
        if config.ptx is not None:
            from agentfactory.train.data import load_chat

            self.ptx = load_chat(config.ptx, self.tokenizer)
        self.iteration, self.ptx_seen = 0, 0
        self.prefetched: RolloutPhase | None = None  # the next iteration's rollout (overlap)
        self.version = self.engine.policy_version
        self.last_reward: float | None = None

    # ----------------------------------------------------------------------------------- rollout
    def prompt_ids(self, task: EnvTask) -> list[int]:
        """The ids the engine continues from: the K2 chat rendering the engine itself uses."""
        from agentfactory.model.chat import encode

        tools = [t.to_openai() for t in task.tools] or None
        return encode(self.tokenizer, [m.to_openai() for m in task.prompt], tools, add_generation_prompt=True)

    def top_up(self, iteration: int) -> tuple[int, list[tuple[str, EnvTask]]]:
        """Draw groups until `prompts_per_iteration` are in flight: single-turn ones join the buffer;
        returns how many were drawn and the multi-turn ones (group, task), played whole now."""
        c = self.config
        n = c.prompts_per_iteration - len(self.buffer.sizes)
        tasks = self.mixture.sample(n, seed=c.seed * 1_000_003 + iteration) if n > 0 else []
        episodes = []
        for j, task in enumerate(tasks):
            group = f"{iteration}.{j}:{task.id}"
            if is_multi_turn(self.mixture.env_of(task)):
                episodes.append((group, task))
                continue
            budget = c.budgets.for_kind(task.kind)
            self.buffer.add(task, self.prompt_ids(task), c.samples_per_prompt, budget, group=group)
        return len(tasks), episodes

    def score(self, groups: list[list[Rollout]]) -> tuple[list[TrainRow], list[Scored]]:
        """Env rewards for every released group; returns the rows and each group's scored responses."""
        rows: list[TrainRow] = []
        scored: list[Scored] = []
        for members in groups:
            task = members[0].task
            trajs = [r.to_trajectory() for r in members]
            breakdowns = self.mixture.score_group(task, trajs)
            scored.append((task, trajs, breakdowns))
            for r, t, b in zip(members, trajs, breakdowns, strict=True):
                if not t.token_ids or t.meta.get("errors"):
                    continue  # an engine failure is not a response to learn from
                rows.append(
                    TrainRow(
                        prompt_ids=r.prompt_ids,
                        response_ids=list(t.token_ids),
                        logprobs=list(t.logprobs or [0.0] * len(t.token_ids)),
                        versions=list(t.meta.get("token_versions") or r.versions)[: len(t.token_ids)],
                        reward=b.total,
                        group=r.group,
                        env=task.env,
                        components={k: v for k, v in b.components.items() if b.weights.get(k)},
                        metrics={k: v for k, v in b.components.items() if not b.weights.get(k)},
                    )
                )
        return rows, scored

    def closed_loop(self, scored: list[Scored], iteration: int) -> tuple[list[TrainRow], dict[str, float]]:
        """Critic rows on the first `closed_loop_groups` verifiable groups (single- or multi-turn)
        whose outcomes differ: each judgment is rewarded for agreeing with the verifier."""
        rows: list[TrainRow] = []
        budget = self.config.critic.closed_loop_groups if self.critic is not None else 0
        for task, trajs, breakdowns in scored:
            outcomes = [b.components.get("correct", b.total) for b in breakdowns]
            if budget > 0 and task.verifiable and max(outcomes) - min(outcomes) >= 0.5:
                budget -= 1
                samples = self.critic.training_samples(task, trajs, outcomes, seed=iteration)
                rows += [critic_row(self.tokenizer, s) for s in samples if s.token_ids]
        stats = {"critic/rows": float(len(rows))}
        if rows:
            stats["critic/agreement"] = sum(r.reward for r in rows) / len(rows)
        return rows, stats

    # ------------------------------------------------------------------------------------- train
    def ptx_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.ptx is None or self.config.loss.ptx_weight == 0:
            return []
        from agentfactory.train.data import step_micro_batches

        c = self.config
        size = c.ptx_batch_size
        batches = step_micro_batches(self.ptx, self.ptx_seen, size, size, c.seed, 0, 1)
        self.ptx_seen += size
        return batches

    def train(self, rows: list[TrainRow]) -> dict[str, Any]:
        from agentfactory.model import update_router_bias
        from agentfactory.train.trainer import TrainingDiverged

        c = self.config
        stats = policy_update(
            self.model,
            rows,
            c.loss,
            pad_id=self.tokenizer.pad_token_id,
            version=self.version,
            micro_batch_size=c.micro_batch_size,
            micro_batch_tokens=c.micro_batch_tokens,
            ptx_batches=self.ptx_batches(),
            autocast=self.autocast,
            uniform=c.uniform_groups,
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip or float("inf"))
        if not math.isfinite(stats["loss"]) or not math.isfinite(float(grad_norm)):
            self.opt.zero_grad(set_to_none=True)
            what = f"loss {stats['loss']}, grad norm {float(grad_norm)}"
            raise TrainingDiverged(
                f"iteration {self.iteration + 1}: {what}; stopped before the update, {self._last_good()}"
            )
        with self.weights_lock:
            clipped = self.opt.step(self.model.pop_max_logits())
            update_router_bias(self.model)
        self.opt.zero_grad(set_to_none=True)
        return {**stats, "grad_norm": float(grad_norm), "clipped_heads": sum(len(h) for h in clipped)}

    def _last_good(self) -> str:
        info = self.out / "checkpoint" / "trainer.json"
        if info.exists():
            return f"the last good checkpoint is {info.parent} (iteration {json.loads(info.read_text())['iteration']})"
        return "no checkpoint was written yet"

    def sync(self) -> dict[str, float]:
        """Push the trainer's weights into the engine in place, tagged with the next version."""
        self.version += 1
        timings = self.engine.update_weights(self.model.state_dict(), self.version)
        return {f"sync/{k}": float(v) for k, v in (timings or {}).items() if isinstance(v, (int, float))}

    # --------------------------------------------------------------------------------- iteration
    def rollout(self, iteration: int) -> RolloutPhase:
        """Phases 1–2 of `iteration`: generate, score, closed-loop critic rows. Touches the engine,
        envs and buffer but not the trainer's model, so it can run beside `train` (`overlap`)."""
        c = self.config
        t0 = time.perf_counter()
        added, episode_groups = self.top_up(iteration)
        temperature = c.temperature.at(iteration)
        params = SamplingParams(temperature=temperature, top_p=c.top_p, seed=c.seed, logprobs=True)
        result = self.buffer.step(self.engine, params)
        rows, scored = self.score(result.groups)
        n, budgets = c.samples_per_prompt, c.budgets
        episodes = rollout_episode_groups(self.mixture, episode_groups, self.engine, n, params, budgets)
        critic_rows, critic_stats = self.closed_loop(scored + episodes.scored, iteration)
        rows += episodes.rows + critic_rows
        s = result.stats
        stats = {
            "temperature": temperature,
            **reward_metrics([r for r in rows if r.env != "critic"]),
            **critic_stats,
            "groups/added": added,
            "groups/trained": len(result.groups) + len(episode_groups),
            "groups/uniform": uniform_groups(rows),
            "rows": len(rows),
            **episodes.stats,
            "tokens/generated": s["generated_tokens"] + episodes.stats["tokens/generated"],
            "rollouts/admitted": s["admitted"],
            "rollouts/resumed": s["resumed"],
            "rollouts/carried": s["carried"],
            "rollouts/multi_segment": s["multi_segment"],
            "staleness/max": s["staleness_max"],
            "staleness/mean": s["staleness_mean"],
            "staleness/dropped": s["dropped_stale"],
            "staleness/restarted": s["restarted_stale"],
            "time/rollout": time.perf_counter() - t0,
        }
        return RolloutPhase(rows, stats)

    def prefetches(self) -> bool:
        """Whether this iteration rolls out the next one beside its training (`overlap`): all but
        the last (a checkpoint keeps a finished prefetched rollout: `save`)."""
        return self.config.overlap and self.iteration + 1 < self.config.iterations

    def step(self) -> dict[str, Any]:
        """One iteration: rollout, reward, train, sync; returns its metrics row. With `overlap`, the
        next iteration's rollout runs on the engine (current weights) while this one trains."""
        from concurrent.futures import ThreadPoolExecutor

        c = self.config
        t0 = time.perf_counter()
        phase, self.prefetched = self.prefetched or self.rollout(self.iteration), None
        rows = phase.rows
        t1 = time.perf_counter()
        sleep = c.engine.sleep_during_training and not c.overlap
        self.stop.clear()
        with (
            ThreadPoolExecutor(1, thread_name_prefix="rollout")
            if self.prefetches()
            else nullcontext() as pool
        ):
            ahead = pool.submit(self.rollout, self.iteration + 1) if pool is not None else None
            if sleep:
                self.engine.sleep()
            try:
                train_stats = self.train(rows) if rows else {"skipped": 1}
            except BaseException:  # Ctrl-C or a failed update: don't wait out the whole prefetch
                self.stop.set()
                raise
            t2 = time.perf_counter()
            if sleep:
                self.engine.wake_up()
            self.prefetched = ahead.result() if ahead is not None else None  # sync waits for it
        t3 = time.perf_counter()
        sync_stats = self.sync() if rows else {}
        t4 = time.perf_counter()
        self.iteration += 1
        self.last_reward = phase.stats.get("reward_mean", self.last_reward)
        overlap = {"time/overlap_wait": t3 - t2} if ahead is not None else {}
        return {
            "iteration": self.iteration,
            "policy_version": self.version,
            **phase.stats,
            **train_stats,
            **sync_stats,
            "time/train": t2 - t1,
            "time/sync": t4 - t3,
            "time/iteration": t4 - t0,
            **overlap,
            "engine/restarts": self.engine.restarts,
        }

    # ------------------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Atomic checkpoint (write `checkpoint.tmp/`, swap by renames): a crash keeps the last one."""
        from agentfactory.train.checkpoint import write_checkpoint_dir

        state = {
            "iteration": self.iteration,
            "version": self.version,
            "ptx_seen": self.ptx_seen,
            "last_reward": self.last_reward,
        }
        buffer = {"buffer.json": json.dumps(self.buffer.state_dict())}
        if self.prefetched is not None:  # the next iteration's rollout, already drawn from the buffer
            phase = {"rows": [asdict(r) for r in self.prefetched.rows], "stats": self.prefetched.stats}
            buffer["prefetched.json"] = json.dumps(phase)
        return write_checkpoint_dir(
            self.out / "checkpoint", self.model.state_dict(), self.opt.state_dict(), state, buffer
        )

    def resume(self) -> bool:
        """Continue from `<output_dir>/checkpoint` (weights pushed to the engine with the saved
        version); without one start afresh (an old metrics file is dropped)."""
        from agentfactory.train.checkpoint import find_checkpoint, keep_rows_through

        path = find_checkpoint(self.out / "checkpoint") if self.config.resume else None
        if path is None:
            self.metrics_path.unlink(missing_ok=True)
            if not self.owns_engine:  # a shared engine may hold other weights: load ours
                self.sync()
            return False
        state = json.loads((path / "trainer.json").read_text())
        self.model.load_state_dict(torch.load(path / "model.pt", map_location=self.device, weights_only=True))
        self.opt.load_state_dict(torch.load(path / "optim.pt", map_location=self.device, weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.buffer.load_state_dict(json.loads((path / "buffer.json").read_text()))
        if (path / "prefetched.json").exists():
            phase = json.loads((path / "prefetched.json").read_text())
            self.prefetched = RolloutPhase([TrainRow(**r) for r in phase["rows"]], phase["stats"])
        self.iteration, self.ptx_seen = state["iteration"], state["ptx_seen"]
        self.last_reward = state.get("last_reward")
        self.version = state["version"] - 1
        self.sync()  # the engine serves the checkpoint's weights, at the checkpoint's version
        keep_rows_through(self.metrics_path, "iteration", self.iteration)  # drop rows after the checkpoint
        return True

    def export(self) -> Path:
        """The final policy as a HF checkpoint + tokenizer (servable by vLLM)."""
        from agentfactory.model.tokenizer import save_tokenizer

        model_dir = self.out / "model"
        self.model.save_pretrained(model_dir)
        save_tokenizer(self.tokenizer, model_dir)
        return model_dir

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()
