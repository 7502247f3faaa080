"""The byte-level BPE tokenizer: trains fast, keeps the K2 special tokens atomic at fixed ids, splits
digits, is lossless, and round-trips through a saved HF tokenizer dir."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfactory.eval.copying import copyable_arguments
from agentfactory.model.chat import IM_END, SPECIAL_TOKENS, THINK_BEGIN, THINK_END, render
from agentfactory.model.tokenizer import load_tokenizer, train_tokenizer

pytestmark = pytest.mark.unit

WORDS = (
    "the order customer refund shipping status weather city please check account email "
    "number flight booking hotel price total café naïve 東京 données"
).split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
        call = json.dumps(
            {"order_id": rng.randint(10**6, 10**7), "email": f"{rng.choice(WORDS)}@example.com"}
        )
        out.append(f"{words} {call} 2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    texts = corpus(3000)
    t0 = time.perf_counter()
    tok = train_tokenizer(texts, 2048, out)
    dt = time.perf_counter() - t0
    n_chars = sum(map(len, texts))
    print(f"\ntrained a {len(tok)}-token BPE on {n_chars / 1e6:.2f}M chars in {dt:.2f}s")
    return tok, out, dt


def test_trains_quickly_and_respects_vocab_size(trained):
    tok, _, dt = trained
    assert dt < 30
    assert len(SPECIAL_TOKENS) + 256 < len(tok) <= 2048


def test_special_tokens_have_fixed_ids_and_stay_atomic(trained):
    tok, _, _ = trained
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(t) == i
        assert tok.encode(f"x{t}y", add_special_tokens=False) == [
            *tok.encode("x", add_special_tokens=False),
            i,
            *tok.encode("y", add_special_tokens=False),
        ]
    assert (tok.bos_token_id, tok.eos_token, tok.eos_token_id) == (0, IM_END, 1)
    assert tok.pad_token_id is not None and tok.unk_token_id is not None
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello", add_special_tokens=False)


def test_think_tokens_survive_skip_special_tokens(trained):
    tok, _, _ = trained
    ids = tok.encode(f"{THINK_BEGIN}a{THINK_END}b{IM_END}", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == f"{THINK_BEGIN}a{THINK_END}b"


def test_digits_are_split_one_per_token(trained):
    tok, _, _ = trained
    for s in ["1234567", "order 9876543210", "x=3.14159"]:
        pieces = [tok.decode([i]) for i in tok.encode(s, add_special_tokens=False)]
        digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
        assert all(len(p.strip()) == 1 for p in digit_pieces), (s, pieces)
    n = len(tok.encode(" 1234567", add_special_tokens=False))
    print(f"a 7-digit id takes {n} tokens (space + 7 digits)")
    assert n == 8


def test_compression(trained):
    tok, _, _ = trained
    held_out = corpus(200, seed=1)
    n_tok = sum(len(tok.encode(t, add_special_tokens=False)) for t in held_out)
    n_bytes = sum(len(t.encode()) for t in held_out)
    print(f"held-out: {n_bytes / n_tok:.2f} bytes/token")
    assert n_bytes / n_tok > 2.0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=st.text(max_size=200))
def test_lossless(trained, s):
    tok, _, _ = trained
    assert tok.decode(tok.encode(s, add_special_tokens=False)) == s


def test_saved_dir_loads_offline_with_chat_template(trained):
    tok, out, _ = trained
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    loaded = load_tokenizer(out)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    msgs = [{"role": "user", "content": "Order 1234567 — où est-il?"}]
    for t in (loaded, auto):
        assert t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == render(
            msgs, None, True
        )
        assert t.encode("Order 1234567", add_special_tokens=False) == tok.encode(
            "Order 1234567", add_special_tokens=False
        )
        assert len(t) == len(tok)


def test_too_small_vocab_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], 100, tmp_path)


def test_deterministic(tmp_path):
    texts = corpus(300, seed=2)
    a = train_tokenizer(texts, 500)
    b = train_tokenizer(texts, 500)
    assert a.get_vocab() == b.get_vocab()


def test_iter_corpus_renders_chat_records(tmp_path):
    from agentfactory.model.tokenizer import iter_corpus

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    (tmp_path / "a.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [{"messages": msgs}, {"text": "plain"}, {"other": 1}]) + "\n"
    )
    (tmp_path / "b.txt").write_text("line one\n\nline two\n")
    got = list(iter_corpus([tmp_path / "a.jsonl", tmp_path / "b.txt"]))
    assert got == [render(msgs), "plain", "line one\n", "line two\n"]


def test_digits_single_pairs_or_runs():
    texts = [f"order {n} shipped" for n in range(1000, 1400)] * 3
    split = train_tokenizer(texts, 400)
    pairs = train_tokenizer(texts, 400, digits="pairs")
    merged = train_tokenizer(texts, 400, digits="runs")
    pieces = lambda tok, s: [tok.decode([i]) for i in tok.encode(s, add_special_tokens=False)]  # noqa: E731
    assert pieces(split, "1234") == ["1", "2", "3", "4"]
    # pairs from the left, the same pieces wherever the number stands (a JSON value, after a word)
    assert pieces(pairs, "12345") == ["12", "34", "5"]
    for text in ('{"id": "1234"}', "order 1234 shipped", "id 1234."):
        got = pieces(pairs, text)
        assert got[got.index("12") : got.index("12") + 2] == ["12", "34"], got
    assert len(merged.encode("1234", add_special_tokens=False)) < 4
    for tok in (split, pairs, merged):
        assert (
            tok.decode(tok.encode("order 12345 shipped", add_special_tokens=False)) == "order 12345 shipped"
        )
    with pytest.raises(ValueError, match="digits must be one of"):
        train_tokenizer(texts, 400, digits="triples")


def test_trailing_spaces_make_values_copy_token_for_token():
    """A value typed after a space must tokenize as it does inside a JSON argument, else a tool call
    cannot copy it token for token; GPT-2's leading spaces break exactly that."""
    rng = random.Random(1)
    names = ["osborne", "abigail", "rodriguez", "lee", "kristy", "hayes", "order", "lock"]
    values = [f"{rng.choice(names)}{rng.choice(names)}@example.com" for _ in range(200)]
    values += [f"LK-{rng.randint(1000, 9999)}" for _ in range(200)]
    texts = [f"Sure, my email is {v} and {v}." for v in values[:100]]
    texts += [json.dumps({"email": v, "lock": v}) for v in values[100:]]
    trailing, leading = train_tokenizer(texts, 600), train_tokenizer(texts, 600, spaces="leading")

    def records(values: list[str]) -> list[dict]:
        return [
            {
                "messages": [
                    {"role": "user", "content": f"Hi, my email is {v}, please"},
                    {"role": "assistant", "tool_calls": [{"name": "find", "arguments": {"email": v}}]},
                ]
            }
            for v in values
        ]

    assert copyable_arguments(trailing, records(values), limit=400) == {"arguments": 400, "copyable": 1.0}
    # " osborne" said, "osborne" in the call
    assert copyable_arguments(leading, records(values[:200]))["copyable"] < 0.1
    # the limit: a value followed by a space ends in a different token ("com " vs "com")
    said = trailing.encode("is kristy@example.com please", add_special_tokens=False)
    assert "comĠ" in trailing.convert_ids_to_tokens(said)


@given(st.text(alphabet=st.sampled_from(list("ab é9 \n\t.,-\"'東")), max_size=40))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_trailing_space_pieces_are_lossless(trained, text):
    tok, _, _ = trained
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
