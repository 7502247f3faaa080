"""The K2 chat format: Python renderer == shipped jinja template, render -> parse round trips, malformed
output -> error results, and the token-in-token-out invariant of rollouts."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfactory.model.chat import (
    CALL_END,
    IM_END,
    SPECIAL_TOKENS,
    ParsedAssistant,
    encode,
    encode_continuation,
    encode_with_mask,
    parse_assistant,
    render,
    render_assistant,
)
from agentfactory.model.tokenizer import train_tokenizer

pytestmark = pytest.mark.unit

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city. Ünïcode ok.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}},
]


def _call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Rome and order 1234567?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            _call("call_a", "get_weather", '{"city": "Rome"}'),
            _call("call_b", "lookup_order", {"order_id": 1234567}),
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "name": "get_weather", "content": "18C, clear"},
    {"role": "tool", "tool_call_id": "call_b", "content": '{"status": "shipped"}'},
    {"role": "assistant", "content": "18C and clear; your order shipped."},
    {"role": "user", "content": [{"type": "text", "text": "Thanks! "}, {"type": "text", "text": "Again?"}]},
    {"role": "assistant", "content": None, "tool_calls": [_call("call_a", "get_weather", {"city": "Rome"})]},
    {"role": "tool", "tool_call_id": "call_a", "content": "19C"},
]

GOLDEN = (
    '<|im_system|>tool_declare<|im_middle|>[{"type":"function","function":{"name":"lookup_order",'
    '"parameters":{"type":"object"}}}]<|im_end|>'
    "<|im_system|>system<|im_middle|>You are terse.<|im_end|>"
    "<|im_user|>user<|im_middle|>Order 7?<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>On it.<|tool_calls_section_begin|>"
    '<|tool_call_begin|>functions.lookup_order:0<|tool_call_argument_begin|>{"order_id": 7}<|tool_call_end|>'
    "<|tool_calls_section_end|><|im_end|>"
    "<|im_system|>lookup_order<|im_middle|>## Return of functions.lookup_order:0\nshipped<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>"
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(0)
    words = "the order weather city refund status please check my account email is was".split()
    texts = [json.dumps(TOOLS), *(json.dumps(m, ensure_ascii=False) for m in CONVERSATION)]
    texts += [
        " ".join(rng.choice(words) for _ in range(12)) + f" #{rng.randint(0, 10**7)}" for _ in range(500)
    ]
    return train_tokenizer(texts, 600, tmp_path_factory.mktemp("tok"))


# ----------------------------------------------------------------------------------- renderer/template


def test_golden_rendering():
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Order 7?"},
        {
            "role": "assistant",
            "content": "On it.",
            "tool_calls": [_call("x9", "lookup_order", {"order_id": 7})],
        },
        {"role": "tool", "tool_call_id": "x9", "name": "lookup_order", "content": "shipped"},
    ]
    assert render(msgs, TOOLS[1:], add_generation_prompt=True) == GOLDEN


def test_tool_result_refers_to_the_rendered_header():
    text = render(CONVERSATION)
    assert "## Return of functions.get_weather:0\n18C" in text
    assert "## Return of functions.lookup_order:1\n" in text
    assert "## Return of functions.get_weather:0\n19C" in text  # id reused later: latest call wins
    orphan = render([{"role": "tool", "tool_call_id": "call_zz", "content": "x"}])
    assert orphan == "<|im_system|>tool<|im_middle|>## Return of call_zz\nx<|im_end|>"


def _cases():
    yield [{"role": "user", "content": "hi"}], None
    yield [{"role": "user", "content": "hi"}], []
    yield CONVERSATION, TOOLS
    yield CONVERSATION[:3], TOOLS
    yield [{"role": "user", "name": "alice", "content": "ciao 🌍"}], TOOLS
    yield (
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url"},
                    {"type": "text", "text": "b"},
                ],
            }
        ],
        None,
    )
    yield [{"role": "assistant", "reasoning_content": "think 1+1", "content": "2"}], None
    yield [{"role": "assistant", "content": "", "tool_calls": [_call("c", "f", {})]}], None
    yield [{"role": "assistant", "content": "x", "tool_calls": [_call("c", "f", None)]}], None
    yield [{"role": "developer", "content": "rules"}, {"role": "tool", "content": None}], None


@pytest.mark.parametrize("gen", [False, True])
def test_renderer_matches_template(tok, gen):
    n = 0
    for msgs, tools in _cases():
        want = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)
        assert render(msgs, tools, add_generation_prompt=gen) == want
        ids = tok.apply_chat_template(msgs, tools=tools, tokenize=True, add_generation_prompt=gen)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert encode(tok, msgs, tools, add_generation_prompt=gen) == list(ids)
        n += 1
    print(f"renderer == template on {n} hand-written conversations (add_generation_prompt={gen})")


# ------------------------------------------------------------------------------------------ strategies

_STRUCT = (*SPECIAL_TOKENS, "<|")
text = st.text(max_size=40).filter(lambda s: not any(t in s for t in _STRUCT))
name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,24}(\.[A-Za-z_][A-Za-z0-9_]{0,8})?", fullmatch=True)
json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
    max_leaves=12,
)
arguments = st.dictionaries(text, json_value, max_size=5)
content = text | st.lists(text, max_size=3).map(lambda ts: [{"type": "text", "text": t} for t in ts])


@st.composite
def assistant_messages(draw, with_reasoning=True):
    calls = draw(st.lists(st.tuples(name, arguments, st.booleans()), max_size=4))
    msg = {"role": "assistant", "content": draw(text)}
    if with_reasoning and draw(st.booleans()):
        msg["reasoning_content"] = draw(text.filter(bool))
    if calls:  # arguments alternately as the OpenAI JSON string and as a dict
        msg["tool_calls"] = [
            _call(f"id{i}", n, json.dumps(a, ensure_ascii=False) if as_str else a)
            for i, (n, a, as_str) in enumerate(calls)
        ]
    return msg


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(content)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(content)})
        a = draw(assistant_messages())
        msgs.append(a)
        for call in a.get("tool_calls", []):
            res = {"role": "tool", "tool_call_id": call["id"], "content": draw(content)}
            if draw(st.booleans()):
                res["name"] = call["function"]["name"]
            msgs.append(res)
    return msgs


tool_lists = st.none() | st.lists(
    st.builds(
        lambda n, d, p: {"type": "function", "function": {"name": n, "description": d, "parameters": p}},
        name,
        text,
        st.dictionaries(text, json_value, max_size=3),
    ),
    max_size=3,
)

# ------------------------------------------------------------------------------- property-based tests


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(), tools=tool_lists, gen=st.booleans())
def test_renderer_matches_template_property(tok, msgs, tools, gen):
    want = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)
    assert render(msgs, tools, add_generation_prompt=gen) == want


@settings(max_examples=300, deadline=None)
@given(msg=assistant_messages())
def test_render_parse_round_trip(msg):
    parsed = parse_assistant(render_assistant(msg))
    assert parsed.error is None, parsed.error
    assert parsed.content == msg["content"]
    assert parsed.reasoning == msg.get("reasoning_content")
    want = []
    for i, call in enumerate(msg.get("tool_calls", [])):
        fn = call["function"]
        args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
        want.append((f"functions.{fn['name']}:{i}", fn["name"], args))
    assert [tuple(c) for c in parsed.tool_calls] == want
    # The parsed message renders back to the same turn (arguments re-serialized the same way).
    assert render_assistant(parsed.to_message()) == render_assistant(
        {**msg, "tool_calls": [_call(c[0], c[1], c[2]) for c in want]} if want else msg
    )


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from([*SPECIAL_TOKENS, "functions.f:0", "{}", '{"a": 1}', "x", " ", "[1]"])))
def test_parser_never_raises(parts):
    result = parse_assistant("".join(parts))
    assert isinstance(result, ParsedAssistant)
    assert result.error is None or result.tool_calls == []


# ------------------------------------------------------------------------------------ malformed output

S, E, B, A = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
)
MALFORMED = {
    "unclosed section": f'{S}{B}functions.f:0{A}{{"a": 1}}{CALL_END}',
    "unclosed call": f'{S}{B}functions.f:0{A}{{"a": 1}}{E}',
    "header without :IDX": f'{S}{B}functions.f{A}{{"a": 1}}{CALL_END}{E}',
    "header without functions.": f'{S}{B}f:0{A}{{"a": 1}}{CALL_END}{E}',
    "header with spaces": f'{S}{B}functions.my tool:0{A}{{"a": 1}}{CALL_END}{E}',
    "no argument marker": f'{S}{B}functions.f:0{{"a": 1}}{CALL_END}{E}',
    "invalid JSON": f'{S}{B}functions.f:0{A}{{"a": 1,}}{CALL_END}{E}',
    "truncated JSON": f'{S}{B}functions.f:0{A}{{"a": [1, 2{CALL_END}{E}',
    "non-object arguments (list)": f"{S}{B}functions.f:0{A}[1, 2]{CALL_END}{E}",
    "non-object arguments (string)": f'{S}{B}functions.f:0{A}"hi"{CALL_END}{E}',
    "NaN arguments": f'{S}{B}functions.f:0{A}{{"a": NaN}}{CALL_END}{E}',
    "empty section": f"{S}{E}",
    "text between calls": f"{S}{B}functions.f:0{A}{{}}{CALL_END}junk{B}functions.g:1{A}{{}}{CALL_END}{E}",
    "text after section": f"{S}{B}functions.f:0{A}{{}}{CALL_END}{E} trailing words",
    "duplicate ids": f"{S}{B}functions.f:0{A}{{}}{CALL_END}{B}functions.f:0{A}{{}}{CALL_END}{E}",
    "index not the position": f"{S}{B}functions.f:1{A}{{}}{CALL_END}{E}",
    "index with leading zero": f"{S}{B}functions.f:00{A}{{}}{CALL_END}{E}",
    "call outside section": f"{B}functions.f:0{A}{{}}{CALL_END}",
    "nested section": f"{S}{S}{B}functions.f:0{A}{{}}{CALL_END}{E}",
    "marker inside arguments": f'{S}{B}functions.f:0{A}{{"a": "{B}"}}{CALL_END}{E}',
    "role token in content": "hello <|im_user|>user<|im_middle|>more",
    "unclosed think": "<think>hmm and then",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_output_is_an_error_result(case):
    result = parse_assistant(MALFORMED[case] + IM_END)
    assert result.error, case
    assert result.tool_calls == []
    assert result.to_message() == {"role": "assistant", "content": MALFORMED[case] + IM_END}


def test_lenient_cases():
    # Whitespace between markers (a detokenizer may add spaces), empty args = {}, text after <|im_end|>.
    r = parse_assistant(f"hi {S} {B} functions.f:0 {A} {CALL_END}\n{E}{IM_END}ignored")
    assert r.ok and r.content == "hi " and r.tool_calls == [("functions.f:0", "f", {})]
    assert parse_assistant("plain answer").tool_calls == []


def test_parse_speed():
    body = render_assistant(CONVERSATION[2])
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        parse_assistant(body)
    dt = (time.perf_counter() - t0) / n
    print(f"parse_assistant: {dt * 1e6:.1f} us per 2-call turn")
    assert dt < 1e-3


# --------------------------------------------------------------------------- token-in, token-out rollouts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(), tools=tool_lists)
def test_rollout_ids_equal_full_encoding(tok, msgs, tools):
    """prompt ids + sampled assistant ids + appended env-turn ids == encode(whole conversation)."""
    starts = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    ids = encode(tok, msgs[: starts[0]], tools, add_generation_prompt=True)
    for k, i in enumerate(starts):
        ids += tok.encode(render_assistant(msgs[i]), add_special_tokens=False)  # as the engine sampled it
        end = starts[k + 1] if k + 1 < len(starts) else len(msgs)
        if end > i + 1:  # tool results / next user turn, then the next generation prompt
            ids += encode_continuation(tok, msgs[: i + 1], msgs[i + 1 : end], tools)
    last_is_assistant = msgs[-1]["role"] == "assistant"
    assert ids == encode(tok, msgs, tools, add_generation_prompt=not last_is_assistant)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(), tools=tool_lists)
def test_loss_mask_covers_exactly_the_assistant_turns(tok, msgs, tools):
    ids, mask = encode_with_mask(tok, msgs, tools)
    assert ids == encode(tok, msgs, tools)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    want = "".join(render_assistant(m) for m in msgs if m["role"] == "assistant")
    assert tok.decode(trained, skip_special_tokens=False) == want


@settings(max_examples=100, deadline=None)
@given(args=arguments)
def test_dict_and_exported_string_arguments_render_alike(args):
    """vLLM's server json.loads string arguments before templating, and records export them with
    json.dumps(ensure_ascii=False): both paths must give the model the same text."""
    as_dict = render_assistant({"role": "assistant", "tool_calls": [_call("a", "f", args)]})
    as_str = render_assistant(
        {"role": "assistant", "tool_calls": [_call("a", "f", json.dumps(args, ensure_ascii=False))]}
    )
    assert as_dict == as_str


def test_content_parts_join_with_newlines():
    msgs = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}],
        }
    ]
    assert render(msgs) == "<|im_user|>user<|im_middle|>a\nb<|im_end|>"
