"""User simulators: a scripted user (exact, reproducible) and an LLM persona (diverse).

Both reveal the task's `user_facts` only when the agent asks for them, as real users do; both
end the conversation with the `###STOP###` marker once the agent has answered. τ²-bench found
user-simulator mistakes behind up to 30% of failures, so the scripted user is the default for
exactness and the LLM user is opt-in for diversity; which one played is recorded per episode.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.records import Message, Task

STOP = "###STOP###"


@dataclass
class UserTurn:
    text: str
    stop: bool = False
    error: str | None = None


class UserSimulator(Protocol):
    name: str

    def opening(self, task: Task, rng: random.Random) -> str:
        """The user's first message."""
        ...

    def reply(self, items: Sequence[tuple[Task, list[Message], random.Random]]) -> list[UserTurn]:
        """Next user turns for many episodes at once (batched for LLM users)."""
        ...


def _fact_aliases(key: str) -> list[str]:
    words = key.replace("_", " ").lower()
    aliases = {words, key.lower()}
    if words.endswith(" id"):
        aliases |= {words[:-3] + " number", words[:-3]}
    if "email" in words:
        aliases |= {"e-mail", "mail"}
    if "address" in words:
        aliases.add("address")
    return sorted(aliases, key=len, reverse=True)


def asked_facts(question: str, facts: dict[str, object]) -> list[str]:
    """The fact keys an agent message asks about (by name, e.g. 'order id', 'email')."""
    text = question.lower()
    return [k for k in facts if any(re.search(rf"\b{re.escape(a)}\b", text) for a in _fact_aliases(k))]


def revealed(facts: dict[str, object], messages: list[Message]) -> set[str]:
    said = " ".join(m.content or "" for m in messages if m.role == "user")
    return {k for k, v in facts.items() if str(v) in said}


OPENINGS = ("{goal}", "Hi! {goal}", "Hello. {goal}", "{goal} Thanks.")
TERSE = ("{facts}.", "{facts}")
POLITE = ("Sure, {facts}.", "Of course: {facts}.", "Here you go: {facts}.")
CLOSINGS = ("Thanks, that's all.", "Great, thank you.", "OK, thanks.", "Thank you, bye.")
NO_IDEA = ("I don't know anything else.", "That's all I know.", "I'm not sure what you need.")


class ScriptedUser:
    """Plays the task's goal, then answers what the agent asks from `user_facts`, then stops."""

    name = "scripted"

    def opening(self, task: Task, rng: random.Random) -> str:
        return rng.choice(OPENINGS).format(goal=task.user_goal)

    def reply(self, items: Sequence[tuple[Task, list[Message], random.Random]]) -> list[UserTurn]:
        return [self._reply(task, messages, rng) for task, messages, rng in items]

    def _reply(self, task: Task, messages: list[Message], rng: random.Random) -> UserTurn:
        last = next((m for m in reversed(messages) if m.role == "assistant"), None)
        question = (last.content or "") if last else ""
        facts = {k: v for k, v in task.user_facts.items() if k not in revealed(task.user_facts, messages)}
        wanted = asked_facts(question, facts)
        if not wanted and "?" in question and facts:
            wanted = [next(iter(facts))]  # a vague question: volunteer one fact, as a helpful user would
        if wanted:
            parts = [f"my {k.replace('_', ' ')} is {facts[k]}" for k in wanted]
            style = TERSE if "terse" in task.persona.lower() else POLITE
            return UserTurn(rng.choice(style).format(facts=", ".join(parts)))
        if "?" in question:  # asked something the user cannot answer
            return UserTurn(rng.choice(NO_IDEA))
        return UserTurn(f"{rng.choice(CLOSINGS)} {STOP}", stop=True)


USER_PROMPT = """You are simulating a user talking to a customer-service assistant.
Persona: {persona}
Your goal: {goal}
Facts you know (share one only when the assistant asks for it, never all at once):
{facts}
Rules: write only the user's next message, one or two sentences. Do not invent facts you were not given.
When your goal is met, or the assistant says it cannot be done, reply with a short thanks and then {stop}."""


class LLMUser:
    """A persona played by an LLM; ends with ###STOP### (or when max turns is reached by the runner)."""

    name = "llm"

    def __init__(self, engine: Engine, temperature: float = 0.7, max_tokens: int = 96):
        self.engine = engine
        self.params = SamplingParams(temperature=temperature, max_tokens=max_tokens)

    def opening(self, task: Task, rng: random.Random) -> str:
        return task.user_goal  # the goal as written is the cleanest opening; the LLM takes over after

    def reply(self, items: Sequence[tuple[Task, list[Message], random.Random]]) -> list[UserTurn]:
        requests = []
        for task, messages, rng in items:
            facts = "\n".join(f"- {k}: {v}" for k, v in task.user_facts.items()) or "- (none)"
            system = USER_PROMPT.format(
                persona=task.persona or "an ordinary customer", goal=task.user_goal, facts=facts, stop=STOP
            )
            # The simulator sees the dialogue from the user's side: roles swap.
            flipped = [Message(role="system", content=system)]
            for m in messages:
                if m.role == "user":
                    flipped.append(Message(role="assistant", content=m.content))
                elif m.role == "assistant" and m.content:
                    flipped.append(Message(role="user", content=m.content))
            params = self.params.model_copy(update={"seed": rng.randrange(2**31)})
            requests.append(GenerationRequest(messages=flipped, params=params))
        turns = []
        for completion, *_ in self.engine.generate(requests):
            text = (completion.content if completion.content is not None else completion.text).strip()
            if completion.finish_reason == "error" or not text:
                turns.append(
                    UserTurn("", stop=True, error=completion.error or "the user simulator said nothing")
                )
                continue
            stop = STOP in text
            turns.append(UserTurn(text.replace(STOP, "").strip() + (f" {STOP}" if stop else ""), stop=stop))
        return turns
