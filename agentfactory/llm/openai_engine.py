"""OpenAIEngine: any OpenAI-compatible server (`vllm serve`, a hosted API) behind the `Engine` protocol.

- Chat requests use the chat-completions API with native `tools`; the server's tool parser (e.g.
  `vllm serve --enable-auto-tool-choice --tool-call-parser kimi_k2`) returns structured `tool_calls`,
  whose JSON-string arguments become `ToolCall`s (unparsable arguments: `parse_error`, no calls).
- Prompt-id requests (token-in-token-out continuations) use the completions API with a token-id
  prompt; vLLM servers return the sampled ids (`return_token_ids`) and keep special tokens in the text
  so our K2 parser reads the tool calls. Hosted APIs do not accept token ids.
- Each request runs on a thread of a pool of `concurrency` workers (the in-flight limit). Connection
  errors, timeouts, 408/409/429 and 5xx are retried `max_retries` times with exponential backoff and
  jitter; then, as for any other API error (400, 401, 404, ...), the result is a completion with
  `finish_reason="error"` and the message — never an exception.
The `openai` SDK is imported only here (its own retries are off: this class owns the policy).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agentfactory.llm.base import Completion, FinishReason, GenerationRequest
from agentfactory.model.chat import parse_assistant
from agentfactory.records import ToolCall

log = logging.getLogger(__name__)

_FINISH: dict[str | None, FinishReason] = {
    "stop": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "length": "length",
    "content_filter": "abort",
    "abort": "abort",
}
_RETRY_STATUS = {408, 409, 429}


class OpenAIEngine:
    """`Engine` over an OpenAI-compatible HTTP endpoint."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        concurrency: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        import openai

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base_url, self.model = base_url, model
        self.model_id = f"{base_url}|{model}"
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.extra_body = dict(extra_body or {})
        self.policy_version = 0
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=timeout,
            max_retries=0,
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-engine")
        self._rng = random.Random()
        self._lock = threading.Lock()
        self.retries = 0  # total retried calls, for logs and tests

    # ------------------------------------------------------------------------------------ generate
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests concurrently (at most `concurrency` in flight); `result[i]` holds n completions."""
        return list(self._pool.map(self._generate_one, requests))

    def _generate_one(self, req: GenerationRequest) -> list[Completion]:
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                if req.prompt_ids is not None:
                    return self._complete_ids(req)
                return self._chat(req)
            except (openai.APIConnectionError, openai.APIStatusError) as exc:  # timeouts included
                status = getattr(exc, "status_code", None)
                retriable = status is None or status >= 500 or status in _RETRY_STATUS
                error = f"{type(exc).__name__}: {_message(exc)}"
                if not retriable or attempt == self.max_retries:
                    break
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + self._rng.random())
                log.warning("request %r failed (%s); retry %d in %.2f s", req.id, error, attempt + 1, delay)
                with self._lock:
                    self.retries += 1
                time.sleep(delay)
            except Exception as exc:  # a malformed response, a bad argument: an error record
                error = f"{type(exc).__name__}: {exc}"
                break
        log.error("request %r failed: %s", req.id, error)
        return [
            Completion(request_id=req.id, index=k, finish_reason="error", error=error)
            for k in range(req.params.n)
        ]

    def _common(self, req: GenerationRequest) -> dict[str, Any]:
        p = req.params
        kwargs: dict[str, Any] = dict(model=self.model, temperature=p.temperature, top_p=p.top_p, n=p.n)
        if p.stop:
            kwargs["stop"] = list(p.stop)
        if p.seed is not None:
            kwargs["seed"] = p.seed
        if p.ignore_eos:  # a vLLM extension
            kwargs["extra_body"] = {"ignore_eos": True}
        return kwargs

    def _chat(self, req: GenerationRequest) -> list[Completion]:
        kwargs = self._common(req)
        kwargs["messages"] = [m.to_openai() for m in req.messages or []]
        kwargs["max_completion_tokens"] = req.params.max_tokens
        if req.tools:
            kwargs["tools"] = [t.to_openai() for t in req.tools]
        if req.params.logprobs:
            kwargs["logprobs"] = True
        if self.extra_body or "extra_body" in kwargs:
            kwargs["extra_body"] = {**kwargs.get("extra_body", {}), **self.extra_body}
        resp = self.client.chat.completions.create(**kwargs)
        usage = resp.usage
        out = []
        for choice in resp.choices:
            msg = choice.message
            calls, parse_error = [], None
            try:
                calls = [
                    ToolCall.from_openai(
                        {"id": c.id, "function": {"name": c.function.name, "arguments": c.function.arguments}}
                    )
                    for c in msg.tool_calls or []
                ]
            except ValueError as exc:  # e.g. arguments that are not a JSON object
                calls, parse_error = [], str(exc)
            logprobs = None
            if req.params.logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
                logprobs = [t.logprob for t in choice.logprobs.content]
            token_ids = _extra(choice, "token_ids") or []
            out.append(
                Completion(
                    request_id=req.id,
                    index=choice.index,
                    text=msg.content or "",
                    token_ids=list(token_ids),
                    logprobs=logprobs,
                    finish_reason=_FINISH.get(choice.finish_reason, "stop"),
                    content=msg.content,
                    tool_calls=calls,
                    parse_error=parse_error,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=len(token_ids)
                    or (usage.completion_tokens if usage and req.params.n == 1 else 0),
                )
            )
        return out

    def _complete_ids(self, req: GenerationRequest) -> list[Completion]:
        kwargs = self._common(req)
        kwargs["prompt"] = list(req.prompt_ids or [])
        kwargs["max_tokens"] = req.params.max_tokens
        if req.params.logprobs:
            kwargs["logprobs"] = 0
        # vLLM extensions: the sampled ids, and the tool-call markers kept in the text
        extra = {
            "return_token_ids": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        }
        kwargs["extra_body"] = {**extra, **kwargs.get("extra_body", {}), **self.extra_body}
        resp = self.client.completions.create(**kwargs)
        out = []
        for choice in resp.choices:
            parsed = parse_assistant(choice.text)
            logprobs = None
            if req.params.logprobs and choice.logprobs is not None:
                logprobs = list(choice.logprobs.token_logprobs or [])
            token_ids = list(_extra(choice, "token_ids") or [])
            out.append(
                Completion(
                    request_id=req.id,
                    index=choice.index,
                    text=choice.text,
                    token_ids=token_ids,
                    logprobs=logprobs,
                    finish_reason=_FINISH.get(choice.finish_reason, "stop"),
                    content=parsed.content if parsed.ok else choice.text,
                    tool_calls=[
                        ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in parsed.tool_calls
                    ],
                    parse_error=parsed.error,
                    prompt_tokens=len(req.prompt_ids or []),
                    completion_tokens=len(token_ids),
                )
            )
        return out

    # ----------------------------------------------------------------------------------- lifecycle
    def update_weights(self, weights: Mapping[str, Any] | str | Path, version: int) -> None:
        raise NotImplementedError(
            "an OpenAI-compatible endpoint serves fixed weights; restart it on the new checkpoint "
            "(then set `policy_version`) or use VLLMEngine for in-place updates"
        )

    def sleep(self) -> None:
        log.info("sleep() is a no-op for a remote endpoint")

    def wake_up(self) -> None:
        log.info("wake_up() is a no-op for a remote endpoint")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


def _extra(obj: Any, name: str) -> Any:
    """A field the SDK does not model (e.g. vLLM's `token_ids`), kept in pydantic's extras."""
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


def _message(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    text = getattr(exc, "message", None) or str(exc)
    return f"HTTP {status}: {text}" if status else text
