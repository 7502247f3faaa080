"""The synthesis stage's config (`synth:` in a pipeline YAML, e.g. pipelines/tool_sft.yaml)."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, model_validator

from agentfactory.config import StrictModel
from agentfactory.llm.base import SamplingParams
from agentfactory.llm.config import EngineConfig
from agentfactory.synth.agents import AgentSampling
from agentfactory.synth.episode import EpisodeLimits
from agentfactory.synth.judge import JudgeConfig
from agentfactory.synth.llmtasks import LLMTaskConfig
from agentfactory.synth.toolexec import ToolExecConfig


class AgentRole(StrictModel):
    kind: Literal["oracle", "policy"] = "oracle"
    engine: EngineConfig | None = None
    slip: float = Field(
        0.0, ge=0, le=1,
        description="oracle: share of episodes with one mistyped call, its tool error, then the right "
        "call (recovery data; the mistyped turn is not trained on)",
    )  # fmt: skip
    sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(temperature=0.7, max_tokens=256, logprobs=True)
    )

    @model_validator(mode="after")
    def _engine(self) -> AgentRole:
        if self.kind == "policy" and self.engine is None:
            raise ValueError("a policy agent needs an engine")
        return self


class UserRole(StrictModel):
    kind: Literal["scripted", "llm"] = "scripted"
    engine: EngineConfig | None = None

    @model_validator(mode="after")
    def _engine(self) -> UserRole:
        if self.kind == "llm" and self.engine is None:
            raise ValueError("an llm user needs an engine")
        return self


class ToolRole(ToolExecConfig):
    engine: EngineConfig | None = Field(None, description="the world model for mode: simulated")

    @model_validator(mode="after")
    def _engine(self) -> ToolRole:
        if self.mode == "simulated" and self.engine is None:
            raise ValueError("simulated tools need an engine")
        return self


class JudgeRole(JudgeConfig):
    engine: EngineConfig | None = Field(None, description="LLM judge for llm_criteria (none: skip them)")


class SynthConfig(StrictModel):
    domains: list[str] | None = Field(None, description="domain names (default: every shipped domain)")
    world_start: int = Field(
        100, ge=0, description="first world seed (0..99 are kept for held-out evaluation)"
    )
    worlds: int = Field(20, ge=1, description="world seeds per domain: world_start .. world_start+worlds-1")
    templates: list[str] | None = Field(None, description="only these task template ids")
    max_tasks: int | None = Field(None, ge=1)
    llm_tasks: LLMTaskConfig | None = Field(
        None, description="also ask an LLM for tasks grounded in each world"
    )
    agents: AgentSampling = Field(default_factory=AgentSampling)
    agent: AgentRole = Field(default_factory=AgentRole)
    user: UserRole = Field(default_factory=UserRole)
    tools: ToolRole = Field(default_factory=ToolRole)
    judge: JudgeRole = Field(default_factory=JudgeRole)
    limits: EpisodeLimits = Field(default_factory=EpisodeLimits)
    attempts: int = Field(1, ge=1, description="rejection sampling: episodes per task until one is accepted")
    workers: int = Field(2, ge=1, description="Ray episode workers")
    batch_size: int = Field(16, ge=1, description="episodes per worker call (advanced in lockstep)")
    inflight_per_worker: int = Field(
        2, ge=1, description="bounded in-flight batches per worker (backpressure)"
    )
    ray_address: str | None = Field(None, description="Ray cluster address (default: a local Ray)")
    shard_size: int = Field(200, ge=1, description="records per output shard")
    seed: int = 0

    def fingerprint(self) -> str:
        """What decides the records: a resumed run must have the same (parallelism may differ)."""
        fixed = self.model_dump(
            mode="json",
            exclude={
                "workers",
                "batch_size",
                "inflight_per_worker",
                "ray_address",
                "shard_size",
                "max_tasks",
            },
        )
        return hashlib.sha256(repr(sorted(fixed.items())).encode()).hexdigest()[:16]
