"""Token-in-token-out conversations: ids equal the template rendering of the final transcript where
the model sampled canonical tokens, keep the sampled ids where it did not, and the loss mask covers
exactly the sampled tokens; partial turns continue across policy versions."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from agentfactory.llm import Completion, GenerationRequest, SamplingParams
from agentfactory.llm.conversation import NOT_SAMPLED, Conversation, generate_turns
from agentfactory.model.chat import IM_END, SPECIAL_TOKENS, encode, encode_with_mask, render, render_assistant
from agentfactory.model.tokenizer import train_tokenizer

pytestmark = pytest.mark.unit

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look up an order.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "cancel_order", "parameters": {"type": "object"}}},
]
PROMPT = [
    {"role": "system", "content": "You are a terse order desk."},
    {"role": "user", "content": "Cancel order A17 please."},
]


def _call(idx, name, args):
    return {
        "id": f"functions.{name}:{idx}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


# The assistant turns the scripted "policy" produces, in order.
TURNS = [
    {"role": "assistant", "content": "Checking.", "tool_calls": [_call(0, "get_order", {"order_id": "A17"})]},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            _call(0, "cancel_order", {"order_id": "A17"}),
            _call(1, "get_order", {"order_id": "A17"}),
        ],
    },
    {"role": "assistant", "content": "Order A17 is cancelled."},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(0)
    words = "the order cancel cancelled status please check pending shipped A17 desk".split()
    texts = [json.dumps(TOOLS), *(json.dumps(m) for m in PROMPT + TURNS)]
    texts += [" ".join(rng.choice(words) for _ in range(10)) for _ in range(300)]
    return train_tokenizer(texts, 600, tmp_path_factory.mktemp("tok"))


class ScriptedEngine:
    """Samples the next scripted turn; `chars=True` samples a non-canonical tokenization (one piece
    per character) of the same text; `cut` cuts the first turn after that many tokens."""

    name = "scripted"

    def __init__(self, tok, turns, chars=False, cut=None):
        self.tok, self.turns, self.chars, self.cut = tok, list(turns), chars, cut
        self.policy_version = 0
        self.pending: list[int] = []
        self.batches: list[int] = []

    def _ids(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False)
        if not self.chars:
            return ids
        out = []  # special tokens stay whole; every other token is split into one piece per character
        for i in ids:
            piece = self.tok.decode([i], skip_special_tokens=False)
            out += (
                [i]
                if i < len(SPECIAL_TOKENS)
                else [j for ch in piece for j in self.tok.encode(ch, add_special_tokens=False)]
            )
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.batches.append(len(requests))
        out = []
        for _ in requests:
            if not self.pending:
                self.pending = self._ids(render_assistant(self.turns.pop(0)))
            n = len(self.pending) if self.cut is None else min(self.cut, len(self.pending))
            ids, self.pending = self.pending[:n], self.pending[n:]
            self.cut = None
            reason = "stop" if not self.pending else "length"
            lps = [-0.5 - 0.01 * k for k in range(len(ids))]
            out.append(
                [
                    Completion(
                        token_ids=ids, logprobs=lps, finish_reason=reason, policy_version=self.policy_version
                    )
                ]
            )
        return out


def _tool_results(message, results):
    return [
        {"role": "tool", "tool_call_id": c["id"], "content": r}
        for c, r in zip(message["tool_calls"], results, strict=True)
    ]


def _run_episode(tok, engine):
    conv = Conversation(tok, PROMPT, TOOLS)
    params = SamplingParams(max_tokens=64, logprobs=True)
    m1 = conv.add_completion(engine.generate([conv.request(params)])[0][0])
    conv.add_messages(_tool_results(m1, ['{"status": "pending"}']))
    m2 = conv.add_completion(engine.generate([conv.request(params)])[0][0])
    conv.add_messages(_tool_results(m2, ["ok", '{"status": "cancelled"}']))
    m3 = conv.add_completion(engine.generate([conv.request(params)])[0][0])
    assert m3 == {"role": "assistant", "content": "Order A17 is cancelled."}
    return conv


def test_three_turn_ids_equal_template_rendering(tok):
    conv = _run_episode(tok, ScriptedEngine(tok, TURNS))
    ids, mask = encode_with_mask(tok, conv.messages, TOOLS)
    assert conv.ids == ids == encode(tok, conv.messages, TOOLS)
    assert conv.mask == mask
    roles = ["system", "user", "assistant", "tool", "assistant", "tool", "tool", "assistant"]
    assert [m["role"] for m in conv.messages] == roles
    assert conv.messages[2]["tool_calls"][0]["function"]["name"] == "get_order"
    assert [c.name for c in conv.parsed[1].tool_calls] == ["cancel_order", "get_order"]


def test_mask_covers_exactly_the_sampled_tokens(tok):
    engine = ScriptedEngine(tok, TURNS)
    conv = _run_episode(tok, engine)
    sampled = [tok.encode(render_assistant(t), add_special_tokens=False) for t in TURNS]
    runs, cur = [], []  # the masked runs, in order
    for i, m in zip(conv.ids, conv.mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs, cur = [*runs, cur], []
    runs += [cur] if cur else []
    assert runs == sampled
    assert conv.num_sampled == sum(map(len, sampled))
    assert all(lp == 0.0 for lp, m in zip(conv.logprobs, conv.mask, strict=True) if not m)
    assert all(lp < 0 for lp, m in zip(conv.logprobs, conv.mask, strict=True) if m)
    assert all((v == NOT_SAMPLED) != bool(m) for v, m in zip(conv.versions, conv.mask, strict=True))
    assert conv.ids[: conv.prompt_len] == encode(tok, PROMPT, TOOLS, add_generation_prompt=True)


def test_non_canonical_samples_are_kept_not_retokenized(tok):
    conv = _run_episode(tok, ScriptedEngine(tok, TURNS, chars=True))
    template_ids, template_mask = encode_with_mask(tok, conv.messages, TOOLS)
    assert conv.ids != template_ids  # the model sampled another tokenization of the same text ...
    assert tok.decode(conv.ids, skip_special_tokens=False) == render(conv.messages, TOOLS)  # ... same text
    assert conv.num_sampled > sum(template_mask)
    # the environment (unmasked) tokens are exactly the template's, in the same order
    env = [i for i, m in zip(conv.ids, conv.mask, strict=True) if not m]
    assert env == [i for i, m in zip(template_ids, template_mask, strict=True) if not m]


def test_partial_turn_continues_under_new_weights(tok):
    engine = ScriptedEngine(tok, TURNS, cut=5)
    conv = Conversation(tok, PROMPT, TOOLS)
    assert conv.add_completion(engine.generate([conv.request()])[0][0]) is None  # cut by length
    assert conv.turn_open
    engine.policy_version = 1  # weights changed between iterations
    message = conv.add_completion(engine.generate([conv.request()])[0][0])
    assert message["tool_calls"][0]["function"]["name"] == "get_order"
    sampled_versions = [v for v in conv.versions if v != NOT_SAMPLED]
    assert sampled_versions[:5] == [0] * 5 and set(sampled_versions[5:]) == {1}
    assert conv.min_version() == 0
    assert conv.ids == encode(tok, conv.messages, TOOLS)


def test_truncated_turn_is_closed_with_an_unsampled_end(tok):
    engine = ScriptedEngine(tok, [{"role": "assistant", "content": "Let me check the order status"}], cut=3)
    conv = Conversation(tok, PROMPT, TOOLS)
    conv.add_completion(engine.generate([conv.request()])[0][0])
    conv.add_messages([{"role": "user", "content": "Well?"}])
    end = tok.convert_tokens_to_ids(IM_END)
    i = conv.ids.index(end, conv.prompt_len)
    assert conv.mask[i - 3 : i] == [1, 1, 1] and conv.mask[i] == 0  # <|im_end|> was not sampled
    assert conv.ids == encode(tok, conv.messages, TOOLS, add_generation_prompt=True)


def test_malformed_tool_call_is_recorded_and_the_episode_goes_on(tok):
    bad = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_order<|tool_call_argument_begin|>{oops"
    )
    conv = Conversation(tok, PROMPT, TOOLS)
    ids = tok.encode(bad + IM_END, add_special_tokens=False)
    message = conv.add_completion(Completion(token_ids=ids, finish_reason="stop"))
    assert conv.last.error and message == {"role": "assistant", "content": bad + IM_END}
    conv.add_messages([{"role": "user", "content": "That call was malformed."}])
    assert conv.ids[conv.prompt_len : conv.prompt_len + len(ids)] == ids
    assert conv.transcript()[-1].content == "That call was malformed."
    with pytest.raises(ValueError, match="failed completion"):
        conv.add_completion(Completion(finish_reason="error", error="down"))


def test_generate_turns_batches_every_active_episode(tok):
    engine = ScriptedEngine(tok, TURNS[:1] * 4)
    convs = [Conversation(tok, PROMPT, TOOLS) for _ in range(4)]
    completions = generate_turns(engine, convs, SamplingParams(logprobs=True))
    assert engine.batches == [4] and len(completions) == 4
    assert all(c.last.tool_calls[0].name == "get_order" for c in convs)
    with pytest.raises(ValueError, match="n=1"):
        generate_turns(engine, convs, SamplingParams(n=2))
