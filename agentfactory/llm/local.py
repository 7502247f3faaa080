"""What the in-process engines (vLLM, torch) share: checkpoint dirs, prompt ids, completions from ids.

A request's prompt is its `prompt_ids`, or its chat rendered with our K2 format. A prompt that cannot
run becomes completions with a reason instead of an exception: "error" for an empty prompt or an id
outside the vocabulary, "length" (with an `error`) when it leaves no room in the context. Tool calls
are parsed with our Kimi K2 parser; malformed output is a `parse_error`, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from agentfactory.llm.base import Completion, FinishReason, GenerationRequest
from agentfactory.model.chat import TokenizerLike, encode, parse_assistant
from agentfactory.records import ToolCall

log = logging.getLogger(__name__)


def check_model_dir(path: str | Path) -> dict[str, Any]:
    """Fail early with a clear message if `path` is not a servable checkpoint dir; returns config.json."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist or is not a directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a HF DeepseekV3 checkpoint dir)")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_file}: invalid JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{cfg_file}: no model_type; not a Hugging Face model config")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: no *.safetensors weight files")
    return config


def model_fingerprint(path: str | Path) -> str:
    """A cheap id of a checkpoint's content (names, sizes, mtimes of its files), for response caches."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def prompt_ids(tokenizer: TokenizerLike, request: GenerationRequest) -> list[int]:
    """The exact ids a request is continued from (chat requests rendered with our K2 format)."""
    if request.prompt_ids is not None:
        return list(request.prompt_ids)
    messages = [m.to_openai() for m in request.messages or []]
    tools = [t.to_openai() for t in request.tools] or None
    return encode(tokenizer, messages, tools, add_generation_prompt=True)


def admit(
    tokenizer: TokenizerLike, request: GenerationRequest, vocab_size: int, max_model_len: int, version: int
) -> tuple[list[int], list[Completion] | None]:
    """(prompt ids, None), or (ids, the request's failed completions) when the prompt cannot run."""
    ids: list[int] = []
    try:
        ids = prompt_ids(tokenizer, request)
        if not ids:
            raise ValueError("empty prompt")
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(f"token id {max(ids) if max(ids) >= 0 else min(ids)} is out of vocabulary")
    except Exception as exc:  # a bad request is an error record, never a crashed batch
        return ids, failed(request, "error", f"{type(exc).__name__}: {exc}", version)
    if len(ids) >= max_model_len:
        error = f"prompt of {len(ids)} tokens leaves no room in the {max_model_len}-token context"
        return ids, failed(request, "length", error, version, len(ids))
    return ids, None


def failed(
    request: GenerationRequest, reason: FinishReason, error: str, version: int, prompt_tokens: int = 0
) -> list[Completion]:
    """The request's `n` completions for a request that did not run."""
    log.warning("request %r: %s", request.id, error)
    return [
        Completion(
            request_id=request.id,
            index=k,
            finish_reason=reason,
            error=error,
            prompt_tokens=prompt_tokens,
            policy_version=version,
        )
        for k in range(request.params.n)
    ]


def completion(
    request: GenerationRequest,
    *,
    index: int,
    text: str,
    token_ids: list[int],
    logprobs: list[float] | None,
    finish_reason: FinishReason,
    prompt_tokens: int,
    version: int,
) -> Completion:
    """A sampled completion (text without the end-of-turn token; ids with it), tool calls parsed."""
    parsed = parse_assistant(text)
    return Completion(
        request_id=request.id,
        index=index,
        text=text,
        token_ids=token_ids,
        logprobs=logprobs if request.params.logprobs else None,
        finish_reason=finish_reason,
        content=parsed.content if parsed.ok else text,
        tool_calls=[ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in parsed.tool_calls],
        parse_error=parsed.error,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(token_ids),
        policy_version=version,
    )
