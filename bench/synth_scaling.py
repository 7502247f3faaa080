"""Synthesis throughput: accepted trajectories/s with 1 vs 2 Ray episode workers, in one run.

Same tasks (oracle agent, scripted user, declarative runtime, rubric judge), same batch size, sent
as the pipeline sends them (task ids against a table each actor holds; records come back as JSON);
Ray is started once and each configuration is timed over several repeats (median), excluding
actor start-up, so the ratio measures the pool's scaling. Goal: ≥ 1.7× with 2 workers on 2 cores.
Writes bench/results/synth_scaling.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections import deque
from pathlib import Path

import ray
from rich.console import Console
from rich.table import Table

from agentfactory.synth.config import SynthConfig
from agentfactory.synth.pipeline import domain_paths, make_tasks
from agentfactory.synth.worker import EpisodeWorker

OUT = Path(__file__).parent / "results"
REPEATS = 5


def throughput(actors: list, batches: list, inflight: int) -> float:
    """Accepted trajectories per second, dispatched as the pipeline does: `inflight` batches per
    actor, and the next batch goes to whichever actor finishes one (batches differ in cost)."""
    t0 = time.perf_counter()
    queue, pending, accepted = deque(batches), {}, 0
    for i, actor in enumerate(actors):
        for _ in range(inflight):
            if queue:
                pending[actor.run_ids.remote(queue.popleft())] = i
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ref)
        accepted += sum(f.accepted for f in ray.get(ref))
        if queue:
            pending[actors[i].run_ids.remote(queue.popleft())] = i
    return accepted / (time.perf_counter() - t0)


def main() -> None:
    console = Console()
    cfg = SynthConfig(worlds=16, batch_size=16)
    paths = domain_paths(cfg)
    tasks = make_tasks(cfg, paths)
    ids = [t.id for t in tasks]
    batches = [[(t, 0) for t in ids[i : i + cfg.batch_size]] for i in range(0, len(ids), cfg.batch_size)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    table_ref = ray.put(tasks)
    worker = ray.remote(num_cpus=1)(EpisodeWorker)
    results = {}
    for n in (1, 2):
        actors = [worker.remote(cfg, paths, table_ref) for _ in range(n)]
        throughput(actors, batches, cfg.inflight_per_worker)  # warm-up pass: imports, domains, caches
        runs = [throughput(actors, batches, cfg.inflight_per_worker) for _ in range(REPEATS)]
        results[n] = {"accepted_per_s": statistics.median(runs), "runs": runs}
        for a in actors:
            ray.kill(a)
    ray.shutdown()
    ratio = results[2]["accepted_per_s"] / results[1]["accepted_per_s"]
    table = Table(
        "workers", "accepted/s (median)", "ratio vs 1", title=f"Synthesis scaling ({len(tasks)} tasks)"
    )
    for n, r in results.items():
        table.add_row(
            str(n), f"{r['accepted_per_s']:.1f}", f"{r['accepted_per_s'] / results[1]['accepted_per_s']:.2f}x"
        )
    console.print(table)
    console.print(f"goal ≥ 1.7x: {'met' if ratio >= 1.7 else 'NOT met'} ({ratio:.2f}x)")
    OUT.mkdir(exist_ok=True)
    (OUT / "synth_scaling.json").write_text(
        json.dumps(
            {
                "tasks": len(tasks),
                "batch_size": cfg.batch_size,
                "results": results,
                "ratio_2_vs_1": ratio,
                "goal": 1.7,
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "versions": {"ray": ray.__version__},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
