"""Resumable, idempotent output: records in atomically written jsonl shards plus a manifest.

A shard is written to a temporary name and renamed when complete, so after a kill -9 every
shard on disk is whole. The shards are the truth: on resume, the set of finished work comes from
reading them (the manifest is a summary), so nothing is lost or written twice whatever the
moment of the kill. A task is finished when it has an accepted record or `attempts` rejected ones.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from agentfactory.records import Trajectory


class RunMismatch(Exception):
    """The output directory holds a run made with another config."""


def record_id(task_id: str, attempt: int) -> str:
    return f"{task_id}#a{attempt}"


class ShardStore:
    def __init__(self, out_dir: str | Path, fingerprint: str, shard_size: int = 200):
        self.dir = Path(out_dir)
        self.shards = self.dir / "shards"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.shard_size = shard_size
        self.buffer: list[str] = []
        manifest = self.read_manifest()
        if manifest and manifest.get("fingerprint") != fingerprint:
            raise RunMismatch(
                f"{self.dir} holds a run made with another synthesis config "
                f"({manifest.get('fingerprint')} != {fingerprint}); use another output dir or --overwrite"
            )
        for tmp in self.shards.glob("*.tmp"):  # a shard being written when the process died
            tmp.unlink()
        self.next_index = 1 + max((int(p.stem.split("-")[1]) for p in self.shard_files()), default=-1)

    # -- reading --------------------------------------------------------------------------------
    def shard_files(self) -> list[Path]:
        return sorted(self.shards.glob("part-*.jsonl"))

    def records(self) -> Iterator[Trajectory]:
        for path in self.shard_files():
            with path.open() as f:
                for line in f:
                    if line.strip():
                        yield Trajectory.model_validate_json(line)

    def progress(self) -> tuple[set[str], Counter]:
        """(tasks with an accepted record, rejected attempts per task) from the shards on disk."""
        accepted: set[str] = set()
        rejected: Counter = Counter()
        for rec in self.records():
            if rec.judge is not None and rec.judge.accepted:
                accepted.add(rec.task_id)
            else:
                rejected[rec.task_id] += 1
        return accepted, rejected

    def read_manifest(self) -> dict | None:
        path = self.dir / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    # -- writing --------------------------------------------------------------------------------
    def add(self, lines: list[str]) -> None:
        """Buffer records (each a Trajectory as one JSON line) and write every full shard."""
        self.buffer += lines
        while len(self.buffer) >= self.shard_size:
            self._write(self.buffer[: self.shard_size])
            self.buffer = self.buffer[self.shard_size :]

    def flush(self) -> None:
        if self.buffer:
            self._write(self.buffer)
            self.buffer = []

    def _write(self, lines: list[str]) -> None:
        final = self.shards / f"part-{self.next_index:05d}.jsonl"
        tmp = final.with_suffix(".tmp")
        with tmp.open("w") as f:
            for line in lines:
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(final)  # atomic: the shard exists whole or not at all
        self.next_index += 1

    def write_manifest(self, summary: dict) -> None:
        manifest = {
            "fingerprint": self.fingerprint,
            "shards": [p.name for p in self.shard_files()],
            **summary,
        }
        tmp = self.dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.rename(self.dir / "manifest.json")
