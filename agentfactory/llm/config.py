"""Engine configs as they appear in pipeline YAML, and `build_engine` (imports the backend lazily)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine


class EngineConfig(StrictModel):
    """Where a role's model runs: in-process vLLM or our own PyTorch decoder (`torch`: machines without
    vLLM) on a local checkpoint, or an OpenAI-compatible endpoint."""

    kind: Literal["vllm", "torch", "openai"] = "vllm"
    model: str = Field(description="checkpoint dir (vllm, torch) or the served model name (openai)")
    base_url: str | None = Field(
        None, description="endpoint URL for kind=openai, e.g. http://127.0.0.1:8000/v1"
    )
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    dtype: str = "float32"
    max_model_len: int = Field(4096, ge=64)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    cpu_reserved_cores: int | None = Field(
        None,
        ge=0,
        description="vLLM-CPU: cores kept off the compute threads (None: none on ≤ 2 cores, else vLLM's 1)",
    )
    device: str = Field("auto", description="kind=torch: auto (CUDA when present), cpu or cuda[:i]")
    seed: int = 0
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _endpoint_needs_url(self) -> EngineConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("kind 'openai' needs base_url")
        return self


def build_engine(config: EngineConfig) -> Engine:
    if config.kind == "openai":
        from agentfactory.llm.openai_engine import OpenAIEngine

        api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else None
        return OpenAIEngine(
            base_url=config.base_url,
            model=config.model,
            api_key=api_key,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
            concurrency=config.concurrency,
        )
    if config.kind == "torch":
        from agentfactory.llm.torch_engine import TorchEngine

        return TorchEngine(
            config.model,
            dtype=config.dtype,
            device=config.device,
            max_model_len=config.max_model_len,
            seed=config.seed,
        )
    from agentfactory.llm.vllm_engine import VLLMEngine

    return VLLMEngine(
        config.model,
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
        cpu_reserved_cores=config.cpu_reserved_cores,
        seed=config.seed,
    )
