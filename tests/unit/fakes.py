"""Test doubles for unit tests only: an Engine whose replies a test scripts."""

from collections.abc import Callable, Sequence

from agentfactory.llm.base import Completion, GenerationRequest
from agentfactory.model.chat import parse_assistant


class ScriptedEngine:
    """Answers each request with `reply(request)`; text is parsed like a real engine's output."""

    name = "scripted"
    policy_version = 0

    def __init__(self, reply: Callable[[GenerationRequest], str]):
        self.reply = reply
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for r in requests:
            self.requests.append(r)
            text = self.reply(r)
            parsed = parse_assistant(text)
            calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]
            out.append(
                [
                    Completion(
                        request_id=r.id,
                        text=text,
                        content=parsed.content if parsed.ok else text,
                        tool_calls=calls,
                        parse_error=parsed.error,
                        token_ids=list(range(len(text.split()))),
                    )
                ]
                * r.params.n
            )
        return out

    def update_weights(self, weights, version: int) -> None:
        self.policy_version = version

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...
