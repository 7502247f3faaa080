"""`agentfactory synth run`: tasks → episodes on a Ray actor pool → judged records in resumable shards.

The driver samples tasks from domain templates over seeded worlds (deduplicated), skips the work
the shards already hold, and feeds batches to a pool of `EpisodeWorker` actors with a bounded
number of batches in flight per worker (backpressure). A rejected attempt goes back to the queue
until `attempts` is spent (rejection sampling). A worker that dies has its batch re-queued on a
fresh actor. Locally Ray runs in-process on this machine; `ray_address` moves the same pipeline
to a cluster.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import random
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentfactory.config import writable_dir
from agentfactory.records import Task
from agentfactory.synth.config import SynthConfig
from agentfactory.synth.store import ShardStore
from agentfactory.synth.worker import EpisodeWorker, Finished
from agentfactory.tools import domain_files, load_domain
from agentfactory.tools.runtime import state_hash
from agentfactory.tools.tasks import instantiate
from agentfactory.tools.world import generate_world


def domain_paths(config: SynthConfig) -> dict[str, str]:
    files = {f.stem: str(f) for f in domain_files()}
    names = config.domains or sorted(files)
    unknown = [n for n in names if n not in files]
    if unknown:
        raise ValueError(f"unknown domains {unknown} (shipped: {', '.join(sorted(files))})")
    return {n: files[n] for n in names}


def make_tasks(config: SynthConfig, paths: dict[str, str], llm_cache: Path | None = None) -> list[Task]:
    """Every template over every world (plus LLM-written tasks if configured), deduplicated (same
    goal, rubric and world), in a seeded order.

    LLM tasks are generated once and kept in `llm_cache` (with the rejected drafts next to it), so a
    resumed run works on exactly the same tasks.
    """
    tasks, seen = [], set()
    engine = None
    llm_tasks: dict[tuple[str, int], list[Task]] = {}
    if config.llm_tasks is not None and llm_cache is not None and llm_cache.exists():
        for line in llm_cache.read_text().splitlines():
            t = Task.model_validate_json(line)
            llm_tasks.setdefault((t.domain, t.meta["world_seed"]), []).append(t)
    elif config.llm_tasks is not None:
        from agentfactory.llm.config import build_engine

        engine = build_engine(config.llm_tasks.engine)
    rejected: list[dict] = []
    for path in paths.values():
        domain = load_domain(path)
        for seed in range(config.world_start, config.world_start + config.worlds):
            state = generate_world(domain, seed)
            world = state_hash(state)
            candidates = [
                instantiate(domain, t, seed, state)
                for t in domain.tasks
                if not config.templates or t.id in config.templates
            ]
            if engine is not None:
                from agentfactory.synth.llmtasks import generate_llm_tasks

                kept, dropped = generate_llm_tasks(engine, domain, state, seed, config.llm_tasks)
                llm_tasks[(domain.name, seed)] = kept
                rejected += dropped
            candidates += llm_tasks.get((domain.name, seed), [])
            for task in candidates:
                if task is None:
                    continue
                key = hashlib.sha256(
                    json.dumps(
                        [task.user_goal, task.rubric.model_dump(mode="json"), world], sort_keys=True
                    ).encode()
                ).hexdigest()
                if key not in seen:
                    seen.add(key)
                    tasks.append(task)
    if engine is not None:
        engine.close()
        if llm_cache is not None:
            llm_cache.write_text("".join(t.model_dump_json() + "\n" for ts in llm_tasks.values() for t in ts))
            llm_cache.with_name("llm_tasks_rejected.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rejected)
            )
    random.Random(config.seed).shuffle(tasks)
    return tasks[: config.max_tasks] if config.max_tasks else tasks


def init_ray(address: str | None, cpus_needed: float = 1) -> bool:
    """Connect to the Ray cluster at `address`, or start a fresh local Ray on this machine (even if
    another one runs here) with at least `cpus_needed` CPUs; nothing if Ray is already initialized
    in this process. Returns whether it started Ray (then the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(address="local", num_cpus=max(math.ceil(cpus_needed), os.cpu_count() or 1))
    ray.init(**kwargs)
    return True


class _Pool:
    """Episode workers as Ray actors (or in-process objects when `use_ray` is False)."""

    def __init__(self, config: SynthConfig, paths: dict[str, str], tasks: list[Task], use_ray: bool):
        self.config, self.paths, self.use_ray = config, paths, use_ray
        self._started_ray = False
        self.tasks: Any = tasks
        if use_ray:
            import ray

            self._started_ray = init_ray(config.ray_address, config.workers)
            self._actor_cls = ray.remote(num_cpus=1, max_restarts=0)(EpisodeWorker)
            self.tasks = ray.put(tasks)  # serialized once, for every actor and replacement
        self.actors = [self._new() for _ in range(config.workers)]

    def _new(self) -> Any:
        return (
            self._actor_cls.remote(self.config, self.paths, self.tasks)
            if self.use_ray
            else EpisodeWorker(self.config, self.paths, self.tasks)
        )

    def submit(self, i: int, batch: list[tuple[str, int]]) -> Any:
        return self.actors[i].run_ids.remote(batch) if self.use_ray else self.actors[i].run_ids(batch)

    def replace(self, i: int) -> None:
        """After actor i died: on a cluster retire its slot (its node may be gone; the survivors take
        the work), unless none survive; locally start a fresh actor."""
        survivors = sum(a is not None for j, a in enumerate(self.actors) if j != i)
        if self.use_ray and self.config.ray_address and survivors:
            self.actors[i] = None
            return
        self.actors[i] = self._new()

    def live(self) -> list[int]:
        return [i for i, a in enumerate(self.actors) if a is not None]

    def close(self) -> None:
        if self.use_ray:
            import ray

            for a in self.actors:
                if a is not None:
                    ray.kill(a)
            if self._started_ray:
                ray.shutdown()
        else:
            for a in self.actors:
                a.close()


def run_synth(
    config: SynthConfig, out_dir: str | Path, console: Console | None = None, use_ray: bool = True
) -> dict[str, Any]:
    """Run (or resume) synthesis into `out_dir`; returns the summary also written to the manifest.

    Without Ray installed (e.g. a GPU image that has only PyTorch) and no cluster asked for, the
    workers run in this process: the same records, one core."""
    console = console or Console()
    t0 = time.perf_counter()
    if use_ray and config.ray_address is None and importlib.util.find_spec("ray") is None:
        console.print("[yellow]Ray is not installed: synthesizing in this process (one core)")
        use_ray = False
    writable_dir(out_dir)
    paths = domain_paths(config)
    store = ShardStore(out_dir, config.fingerprint(), config.shard_size)
    store.write_manifest({"status": "running"})
    tasks = make_tasks(config, paths, store.dir / "llm_tasks.jsonl")
    accepted, rejected = store.progress()
    queue = deque(
        (t.id, rejected[t.id]) for t in tasks if t.id not in accepted and rejected[t.id] < config.attempts
    )
    resumed = len(tasks) - len(queue)
    if resumed:
        console.print(f"resuming: {resumed} of {len(tasks)} tasks already finished in {store.dir}")
    counts = Counter(accepted=len(accepted), episodes=sum(rejected.values()) + len(accepted))
    pool = _Pool(config, paths, tasks, use_ray)
    capacity = config.inflight_per_worker
    inflight: dict[Any, tuple[int, list[tuple[str, int]]]] = {}
    load = Counter()
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            p_tasks = bar.add_task("tasks", total=len(tasks), completed=resumed)
            p_eps = bar.add_task("episodes", total=len(tasks) * config.attempts, completed=counts["episodes"])
            p_acc = bar.add_task("accepted", total=len(tasks), completed=counts["accepted"])
            while queue or inflight:
                for i in pool.live():
                    while queue and load[i] < capacity:
                        batch = [queue.popleft() for _ in range(min(config.batch_size, len(queue)))]
                        inflight[pool.submit(i, batch) if use_ray else object()] = (i, batch)
                        load[i] += 1
                for ref, finished in _completed(inflight, pool, use_ray):
                    i, batch = inflight.pop(ref)
                    load[i] -= 1
                    if finished is None:  # the worker died: re-queue its batch on a fresh actor
                        console.print(f"[yellow]worker {i} died; re-queueing {len(batch)} episodes")
                        pool.replace(i)
                        queue.extendleft(reversed(batch))
                        continue
                    store.add([f.line for f in finished])
                    for f in finished:
                        counts["episodes"] += 1
                        bar.advance(p_eps)
                        if f.accepted:
                            counts["accepted"] += 1
                            bar.advance(p_acc)
                            bar.advance(p_tasks)
                        elif f.attempt + 1 < config.attempts:
                            queue.appendleft((f.task_id, f.attempt + 1))
                        else:
                            bar.advance(p_tasks)
            store.flush()
    finally:
        pool.close()
    summary = summarize(store.records(), len(tasks), time.perf_counter() - t0)
    store.write_manifest({"status": "done", **summary})
    console.print(summary_table(summary))
    return summary


def _completed(inflight: dict, pool: _Pool, use_ray: bool) -> list[tuple[Any, list[Finished] | None]]:
    if not use_ray:  # in-process: run the first pending batch now
        ref = next(iter(inflight))
        i, batch = inflight[ref]
        return [(ref, pool.actors[i].run_ids(batch))]
    import ray
    from ray.exceptions import RayActorError

    done, _ = ray.wait(list(inflight), num_returns=1)
    out = []
    for ref in done:
        try:
            out.append((ref, ray.get(ref)))
        except RayActorError:
            out.append((ref, None))
    return out


def summarize(records: Any, n_tasks: int, seconds: float) -> dict[str, Any]:
    per_domain: dict[str, Counter] = {}
    reasons: Counter = Counter()
    status: Counter = Counter()
    for rec in records:
        c = per_domain.setdefault(rec.meta.get("domain", "?"), Counter())
        c["episodes"] += 1
        c["accepted"] += int(rec.judge.accepted)
        status[rec.status.value] += 1
        if not rec.judge.accepted and rec.judge.reasons:
            reasons[rec.judge.reasons[0].split(":")[0]] += 1
    total = sum(c["episodes"] for c in per_domain.values())
    acc = sum(c["accepted"] for c in per_domain.values())
    return {
        "tasks": n_tasks,
        "episodes": total,
        "accepted": acc,
        "rejected": total - acc,
        "seconds": round(seconds, 2),
        "accepted_per_s": round(acc / seconds, 2) if seconds else None,
        "by_domain": {d: dict(c) for d, c in sorted(per_domain.items())},
        "rollout_status": dict(status),
        "rejection_reasons": dict(reasons.most_common()),
    }


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table("domain", "episodes", "accepted", "rate", title="Synthesis")
    for d, c in summary["by_domain"].items():
        table.add_row(
            d, str(c["episodes"]), str(c["accepted"]), f"{c['accepted'] / max(1, c['episodes']):.0%}"
        )
    table.add_row(
        "[bold]all",
        str(summary["episodes"]),
        str(summary["accepted"]),
        f"{summary['accepted'] / max(1, summary['episodes']):.0%}",
    )
    return table
