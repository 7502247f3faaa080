"""vLLM's own `kimi_k2` tool (and reasoning) parser reads what our renderer writes: same tool-call ids,
names, arguments and content as our `parse_assistant`, non-streaming and streamed token by token through
our trained tokenizer."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfactory.model.chat import IM_END, SPECIAL_TOKENS, parse_assistant, render, render_assistant
from agentfactory.model.tokenizer import train_tokenizer

pytestmark = pytest.mark.integration
vllm_tool_parsers = pytest.importorskip("vllm.tool_parsers")
vllm_reasoning = pytest.importorskip("vllm.reasoning")


# The same generators as tests/unit/test_chat_format.py (test dirs are not packages, so not imported).
text = st.text(max_size=40).filter(lambda s: not any(t in s for t in (*SPECIAL_TOKENS, "<|")))
name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,24}(\.[A-Za-z_][A-Za-z0-9_]{0,8})?", fullmatch=True)
json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
    max_leaves=12,
)


@st.composite
def assistant_messages(draw, with_reasoning=True):
    calls = draw(
        st.lists(st.tuples(name, st.dictionaries(text, json_value, max_size=5), st.booleans()), max_size=4)
    )
    msg = {"role": "assistant", "content": draw(text)}
    if with_reasoning and draw(st.booleans()):
        msg["reasoning_content"] = draw(text.filter(bool))
    if calls:
        msg["tool_calls"] = [
            {
                "id": f"id{i}",
                "type": "function",
                "function": {"name": n, "arguments": json.dumps(a, ensure_ascii=False) if s else a},
            }
            for i, (n, a, s) in enumerate(calls)
        ]
    return msg


content = text | st.lists(text, max_size=3).map(lambda ts: [{"type": "text", "text": t} for t in ts])


@st.composite
def conversations(draw):
    msgs = [{"role": "system", "content": draw(content)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(content)})
        a = draw(assistant_messages(with_reasoning=False))
        msgs.append(a)
        for call in a.get("tool_calls", []):
            msgs.append({"role": "tool", "tool_call_id": call["id"], "content": draw(content)})
    return msgs


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(0)
    words = "the order weather city refund status please check my account".split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    return train_tokenizer(texts, 500, tmp_path_factory.mktemp("tok"))


def _tool_parser(tok):
    return vllm_tool_parsers.ToolParserManager.get_tool_parser("kimi_k2")(tok, tools=None)


def _vllm_calls(info):
    return [(c.id, c.function.name, json.loads(c.function.arguments)) for c in info.tool_calls]


def _expected_content(msg):
    """vLLM drops whitespace-only content in front of tool calls and reports no content as None."""
    content = msg["content"]
    if msg.get("tool_calls") and not content.strip():
        return None
    return content or None


def _stream(tok, text):
    """Feed vLLM's streaming tool parser our tokenization of `text`, one token at a time."""
    parser = _tool_parser(tok)
    ids = tok.encode(text, add_special_tokens=False)
    calls: dict[int, dict] = {}
    content, prev_text, prev_ids = [], "", []
    for i in range(len(ids)):
        cur_ids = ids[: i + 1]
        cur_text = tok.decode(cur_ids, skip_special_tokens=False)
        if cur_text.endswith("\ufffd") and i + 1 < len(ids):
            continue  # hold back an incomplete UTF-8 character, as vLLM's detokenizer does
        delta = parser.extract_tool_calls_streaming(
            prev_text, cur_text, cur_text[len(prev_text) :], prev_ids, cur_ids, cur_ids[len(prev_ids) :], None
        )
        for d in [delta] if delta is not None else []:
            content.append(d.content or "")
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
                slot["id"] = tc.id or slot["id"]
                if tc.function is not None:
                    slot["name"] = tc.function.name or slot["name"]
                    slot["args"] += tc.function.arguments or ""
        prev_text, prev_ids = cur_text, cur_ids
    end = parser.finish_streaming()  # flushes text the lexer held back as a possible marker prefix
    content.append((end.content or "") if end is not None else "")
    for tc in (end.tool_calls or []) if end is not None else []:
        calls.setdefault(tc.index, {"id": tc.id, "name": None, "args": ""})["args"] += (
            tc.function.arguments or ""
        )
    out = [(c["id"], c["name"], json.loads(c["args"] or "{}")) for _, c in sorted(calls.items())]
    return "".join(content), out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=assistant_messages(with_reasoning=False))
def test_vllm_kimi_k2_parser_agrees_with_ours(tok, msg):
    text = render_assistant(msg).removesuffix(IM_END)  # the engine's text stops before the stop token
    ours = parse_assistant(text)
    info = _tool_parser(tok).extract_tool_calls(text, None)
    assert ours.ok
    assert info.tools_called == bool(msg.get("tool_calls"))
    assert _vllm_calls(info) == [tuple(c) for c in ours.tool_calls]
    assert info.content == _expected_content(msg)


def test_parse_time_ours_vs_vllm(tok):
    rng = random.Random(0)
    turns = []
    for i in range(200):
        calls = [
            {
                "id": str(j),
                "type": "function",
                "function": {
                    "name": f"tool_{j}",
                    "arguments": {"id": rng.randint(0, 10**7), "q": "x" * rng.randint(0, 50)},
                },
            }
            for j in range(rng.randint(0, 3))
        ]
        turns.append(
            render_assistant({"role": "assistant", "content": f"turn {i}", "tool_calls": calls}).removesuffix(
                IM_END
            )
        )
    t0 = time.perf_counter()
    ours = [parse_assistant(t) for t in turns]
    t1 = time.perf_counter()
    theirs = [_tool_parser(tok).extract_tool_calls(t, None) for t in turns]
    t2 = time.perf_counter()
    assert [[tuple(c) for c in o.tool_calls] for o in ours] == [_vllm_calls(i) for i in theirs]
    n_calls = sum(len(o.tool_calls) for o in ours)
    print(
        f"\n{len(turns)} turns, {n_calls} tool calls: identical; parse time per turn: "
        f"ours {(t1 - t0) / len(turns) * 1e6:.0f} us, vLLM kimi_k2 {(t2 - t1) / len(turns) * 1e6:.0f} us"
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=assistant_messages(with_reasoning=False))
def test_vllm_streaming_parser_agrees_token_by_token(tok, msg):
    text = render_assistant(msg).removesuffix(IM_END)
    content, calls = _stream(tok, text)
    ours = parse_assistant(text)
    assert calls == [tuple(c) for c in ours.tool_calls]
    assert (content or None) == _expected_content(msg)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=assistant_messages(with_reasoning=True))
def test_vllm_reasoning_then_tool_parser(tok, msg):
    """With reasoning, vLLM's kimi_k2 reasoning parser splits it off first (thinking mode); without,
    serving must pass chat_template_kwargs={"thinking": False} or all text is taken as reasoning."""
    text = render_assistant(msg).removesuffix(IM_END)
    kwargs = {} if msg.get("reasoning_content") else {"chat_template_kwargs": {"thinking": False}}
    reasoning_parser = vllm_reasoning.ReasoningParserManager.get_reasoning_parser("kimi_k2")(tok, **kwargs)
    reasoning, content = reasoning_parser.extract_reasoning(text, None)
    ours = parse_assistant(text)
    assert (reasoning or "").rstrip() == (ours.reasoning or "").rstrip()  # vLLM strips trailing whitespace
    info = _tool_parser(tok).extract_tool_calls(content or "", None)
    assert _vllm_calls(info) == [tuple(c) for c in ours.tool_calls]


def test_malformed_headers_vllm_vs_ours(tok):
    """Where vLLM is lenient our parser reports an error (and vice versa nothing is silently lost)."""
    bad = "<|tool_calls_section_begin|><|tool_call_begin|>functions.f<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>"
    assert not parse_assistant(bad).ok
    info = _tool_parser(tok).extract_tool_calls(bad, None)
    print(
        f"\nheader without :IDX -> vLLM tools_called={info.tools_called}, ours: {parse_assistant(bad).error}"
    )
    assert not info.tools_called


@pytest.fixture(scope="module")
def vllm_model_config(tok, tmp_path_factory):
    """A vLLM ModelConfig over our tokenizer and a tiny DeepseekV3 config.json (no weights needed)."""
    from transformers import DeepseekV3Config
    from vllm.config import ModelConfig

    d = tmp_path_factory.mktemp("model")
    tok.save_pretrained(str(d), save_jinja_files=False)
    DeepseekV3Config(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, kv_lora_rank=512
    ).save_pretrained(d)
    return ModelConfig(model=str(d), tokenizer=str(d), dtype="float32")


def test_vllm_loads_our_tokenizer(tok, vllm_model_config):
    from vllm.tokenizers import get_tokenizer

    vtok = get_tokenizer(vllm_model_config.tokenizer)
    msgs = [{"role": "user", "content": "Order 1234567?"}]
    text = render(msgs, add_generation_prompt=True)
    assert vtok.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert (vtok.eos_token_id, vtok.bos_token_id, len(vtok)) == (1, 0, len(tok))
    assert vtok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(), tools=st.none() | st.just([{"type": "function", "function": {"name": "f"}}]))
def test_vllm_server_chat_rendering_matches_ours(tok, vllm_model_config, msgs, tools):
    """What `vllm serve` feeds the model for an OpenAI chat request == our render (vLLM joins content
    parts with newlines and json.loads string arguments before templating; our format agrees)."""
    import copy

    from vllm.renderers.chat_utils import parse_chat_messages
    from vllm.renderers.hf import resolve_chat_template_content_format, safe_apply_chat_template

    mc = vllm_model_config
    fmt = resolve_chat_template_content_format(None, tools, "auto", tok, model_config=mc)
    conv, _, _ = parse_chat_messages(copy.deepcopy(msgs), mc, fmt)
    got = safe_apply_chat_template(mc, tok, conv, tools=tools, tokenize=False, add_generation_prompt=True)
    assert got == render(msgs, tools, add_generation_prompt=True)
