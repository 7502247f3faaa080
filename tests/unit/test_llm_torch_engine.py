"""TorchEngine and the model's KV-cache decoding, on a real (random) k2 checkpoint and tokenizer:
incremental decoding equals the full forward, greedy equals `generate`, logprobs equal the trainer's
forward, seeded samples do not depend on the batch, the nucleus sampler draws the right
distribution, every finish reason, bad prompts as records, and weight updates."""

from __future__ import annotations

import pytest
import torch

from agentfactory.llm import GenerationRequest, SamplingParams
from agentfactory.llm.prefix_cache import BLOCK, PrefixCache
from agentfactory.llm.torch_engine import TorchEngine, sample_tokens
from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.model.kv_cache import KVCache
from agentfactory.records import Message
from tests.unit.fakes import tiny_math_checkpoint

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_math_checkpoint(tmp_path_factory.mktemp("torch-engine") / "model")


@pytest.fixture
def engine(checkpoint):
    return TorchEngine(checkpoint, device="cpu", max_model_len=128)


def _request(i: int, **params) -> GenerationRequest:
    content = f"Compute {i} + {i + 1}." + " and" * (3 * i)  # prompts of different lengths
    return GenerationRequest(
        id=f"r{i}",
        messages=[Message(role="user", content=content)],
        params=SamplingParams(**{"max_tokens": 12, "logprobs": True, **params}),
    )


def test_cached_decoding_equals_the_full_forward_for_ragged_rows():
    torch.manual_seed(0)
    cfg = K2Config.preset("debug", vocab_size=64, num_hidden_layers=3, first_k_dense_replace=1)
    model = K2ForCausalLM(cfg).eval()
    lengths = [5, 9, 3]
    seqs = [torch.randint(0, 64, (n + 4,)) for n in lengths]
    cache = KVCache(cfg, 3, 32, "cpu", torch.float32)
    prompt = torch.zeros(3, max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        prompt[b, :n] = seqs[b][:n]
    logits = model.decode(prompt, cache, torch.tensor(lengths))
    for step in range(5):
        for b, n in enumerate(lengths):
            full = model(seqs[b][None, : n + step]).logits[0, -1]
            torch.testing.assert_close(logits[b], full, atol=1e-5, rtol=1e-5)
        if step < 4:
            nxt = torch.stack([seqs[b][n + step] for b, n in enumerate(lengths)])[:, None]
            logits = model.decode(nxt, cache, torch.ones(3, dtype=torch.long))
    # dropping and reordering rows keeps each row's own cache
    cache.select(torch.tensor([2, 0]))
    logits = model.decode(torch.tensor([[7], [8]]), cache, torch.ones(2, dtype=torch.long))
    full = model(torch.cat([seqs[0], torch.tensor([8])])[None]).logits[0, -1]
    torch.testing.assert_close(logits[1], full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        model.decode(torch.zeros(2, 30, dtype=torch.long), cache, torch.ones(2, dtype=torch.long))


def test_greedy_equals_generate_and_logprobs_equal_the_forward(engine):
    requests = [_request(i, temperature=0.0) for i in range(3)]
    out = engine.generate(requests)
    for req, (c,) in zip(requests, out, strict=True):
        ids = engine.prompt_ids(req)
        expected = engine.model.generate(torch.tensor([ids]), 12)[0, len(ids) :].tolist()
        assert c.token_ids == expected and c.finish_reason == "length" and c.policy_version == 0
        assert c.prompt_tokens == len(ids) and c.completion_tokens == 12
        forward = engine.prompt_logprobs([ids + c.token_ids])[0][len(ids) - 1 :]
        assert max(abs(a - b) for a, b in zip(forward, c.logprobs, strict=True)) < 1e-5


def test_seeded_samples_do_not_depend_on_the_batch(engine):
    mixed = [_request(0, seed=1, n=3), _request(1, temperature=0.0), _request(2, seed=2, top_p=0.9)]
    together = engine.generate(mixed)
    alone = [engine.generate([r])[0] for r in mixed]
    assert [[c.token_ids for c in g] for g in together] == [[c.token_ids for c in g] for g in alone]
    first = together[0]
    assert [c.index for c in first] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in first}) == 3  # n samples differ
    # small batches (max_seqs) and prefill chunks give the same output as one batch
    greedy = [_request(i, temperature=0.0) for i in range(4)]
    whole = [[c.token_ids for c in g] for g in engine.generate([*greedy, *mixed])]
    engine.max_seqs, engine.prefill_tokens = 2, 30
    assert [[c.token_ids for c in g] for g in engine.generate([*greedy, *mixed])] == whole


def test_sampler_draws_the_nucleus_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(1000, 1)
    u = (torch.arange(1000) + 0.5) / 1000  # a uniform grid: frequencies are the CDF's steps
    for top_p, expected in ((1.0, [0.5, 0.3, 0.15, 0.05]), (0.7, [0.625, 0.375, 0, 0])):
        tokens, logp = sample_tokens(logits, torch.ones(1000), torch.full((1000,), top_p), u)
        freq = torch.bincount(tokens, minlength=4).float() / 1000
        torch.testing.assert_close(freq, torch.tensor(expected), atol=2e-3, rtol=0)
        torch.testing.assert_close(logp, logits[0].log_softmax(-1)[tokens])  # raw logprobs
    # temperature 2 flattens: p ∝ sqrt(p)
    tokens, _ = sample_tokens(logits, torch.full((1000,), 2.0), torch.ones(1000), u)
    flat = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    torch.testing.assert_close(torch.bincount(tokens).float() / 1000, flat / flat.sum(), atol=2e-3, rtol=0)
    tokens, _ = sample_tokens(logits[:2], torch.zeros(2), torch.ones(2), torch.tensor([0.99, 0.99]))
    assert tokens.tolist() == [0, 0]  # temperature 0: argmax whatever u


def test_finish_reasons_and_bad_prompts(engine, monkeypatch):
    eos = engine.eos_token_id
    decode = engine.model.decode

    def eos_after_three(ids, cache, new):  # the real decoder, with <|im_end|> forced from token 4 on
        logits = decode(ids, cache, new)
        if ids.shape[1] == 1 and cache.longest >= start + 3:
            logits[:, eos] = 1e4
        return logits

    req = _request(0, temperature=0.0)
    start = len(engine.prompt_ids(req))
    monkeypatch.setattr(engine.model, "decode", eos_after_three)
    (c,) = engine.generate([req])[0]
    assert c.finish_reason == "stop" and len(c.token_ids) == 4 and c.token_ids[-1] == eos
    assert c.text == engine.text(c.token_ids) and "<|im_end|>" not in c.text
    assert c.text == engine.tokenizer.decode(c.token_ids[:-1], skip_special_tokens=False).rstrip("\ufffd")
    ignoring = req.model_copy(update={"params": req.params.model_copy(update={"ignore_eos": True})})
    (c,) = engine.generate([ignoring])[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 12 and c.token_ids.count(eos) >= 8
    monkeypatch.undo()

    (free,) = engine.generate([req])[0]
    stop_text = engine.tokenizer.decode(free.token_ids[3:5], skip_special_tokens=False)
    stopped = req.model_copy(update={"params": req.params.model_copy(update={"stop": [stop_text]})})
    (c,) = engine.generate([stopped])[0]
    full_text = engine.tokenizer.decode(c.token_ids, skip_special_tokens=False)
    assert c.finish_reason == "stop" and stop_text not in c.text and full_text.startswith(c.text)
    assert len(c.token_ids) <= 5 and stop_text in full_text

    near_end = GenerationRequest(prompt_ids=[5] * 120, params=SamplingParams(max_tokens=50))
    too_long = GenerationRequest(prompt_ids=[5] * 128)
    out_of_vocab = GenerationRequest(prompt_ids=[5, engine.vocab_size])
    a, b, d = engine.generate([near_end, too_long, out_of_vocab])
    assert a[0].finish_reason == "length" and len(a[0].token_ids) == 8  # cut at the 128-token context
    assert b[0].finish_reason == "length" and "no room" in b[0].error
    assert d[0].finish_reason == "error" and "out of vocabulary" in d[0].error


def test_update_weights_from_state_dicts_and_dirs(engine, checkpoint, tmp_path):
    req = _request(1, temperature=0.0)
    before = engine.generate([req])[0][0]
    torch.manual_seed(1)
    other = K2ForCausalLM(engine.model.config)
    other.save_pretrained(tmp_path / "other")
    timings = engine.update_weights(other.state_dict(), version=3)
    after = engine.generate([req])[0][0]
    assert after.policy_version == 3 and timings["total_s"] >= 0 and after.token_ids != before.token_ids
    ids = engine.prompt_ids(req)
    assert after.token_ids == other.generate(torch.tensor([ids]), 12)[0, len(ids) :].tolist()
    engine.update_weights(str(checkpoint), version=4)  # back to the first weights, from a dir
    assert engine.generate([req])[0][0].token_ids == before.token_ids
    # a partial update in checkpoint names touches only its tensors
    engine.update_weights({"lm_head.weight": other.lm_head.weight, "model.norm.weight": other.norm.weight}, 5)
    torch.testing.assert_close(engine.model.lm_head.weight, other.lm_head.weight)
    with pytest.raises(ValueError, match="does not have"):
        engine.update_weights({"nope.weight": torch.zeros(1)}, 6)
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate([req])
    engine.wake_up()
    assert engine.generate([req])[0][0].policy_version == 5


def test_prefix_cache_finds_the_longest_shared_prefix_and_evicts_by_bytes():
    def kv(n: int, fill: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [torch.full((2, n, 4), fill)], [torch.full((2, n, 4), -fill)]

    cache = PrefixCache(max_bytes=2 * 2 * (2 * 40 * 4 * 4))  # room for two 40-token entries
    a = list(range(40))
    b = list(range(20)) + [99] * 20  # shares a's first 20 tokens (one whole block + 4)
    cache.add(a, *kv(40, 1.0))
    cache.add(b, *kv(40, 2.0))
    cache.add(list(range(BLOCK - 1)), *kv(BLOCK - 1, 3.0))  # shorter than a block: not kept
    assert len(cache.entries) == 2
    entry, n = cache.lookup([*a, 7, 8], limit=41)
    assert n == 40 and entry.k[0][0, 0, 0] == 1.0  # all of a
    entry, n = cache.lookup([*a[:35], 5], limit=100)
    assert n == 35 and entry.ids == tuple(a)  # a's blocks, then token by token
    entry, n = cache.lookup(list(range(20)) + [99] * 3, limit=22)
    assert n == 22 and entry.ids == tuple(b)  # the limit caps the match
    assert cache.lookup([5] * 40, limit=40) == (None, 0)
    cache.lookup(a, limit=40)  # a is now the most recently used: adding a third evicts b
    cache.add([1] * 40, *kv(40, 4.0))
    assert cache.lookup(b, limit=40)[1] == 20  # what b shares with a is still found, in a
    assert cache.lookup(a, limit=40)[1] == 40 and cache.bytes <= cache.max_bytes
    cache.clear()
    assert cache.lookup(a, limit=40) == (None, 0) and cache.bytes == 0


def test_prefix_cache_continues_a_conversation_as_if_prefilled(checkpoint):
    """Turn 2 continues turn 1's exact ids (token in, token out): with the prefix cache only the new
    tokens are prefilled, and the samples, logprobs and finish reasons equal an uncached engine's."""
    cached = TorchEngine(checkpoint, device="cpu", max_model_len=128)
    plain = TorchEngine(checkpoint, device="cpu", max_model_len=128, prefix_cache_bytes=0)
    turn1 = [_request(0, seed=1, n=2), _request(1, temperature=0.0), _request(2, seed=3, top_p=0.9)]
    first = cached.generate(turn1)
    assert [[c.token_ids for c in g] for g in first] == [
        [c.token_ids for c in g] for g in plain.generate(turn1)
    ]
    tail = cached.tokenizer("\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    turn2, reused = [], 0
    for req, group in zip(turn1, first, strict=True):
        for c in group:
            ids = cached.prompt_ids(req) + c.token_ids + tail
            params = req.params.model_copy(update={"n": 1, "max_tokens": 8})
            turn2.append(GenerationRequest(id=f"{req.id}.{c.index}", prompt_ids=ids, params=params))
            reused += len(cached.prompt_ids(req)) + len(c.token_ids) - 1
    hits = cached.prefix.hit_tokens
    again, expected = cached.generate(turn2), plain.generate(turn2)
    assert cached.prefix.hit_tokens - hits == reused  # every prefix found, all of it
    for (c,), (e,) in zip(again, expected, strict=True):
        assert c.token_ids == e.token_ids and c.finish_reason == e.finish_reason
        assert max(abs(x - y) for x, y in zip(c.logprobs, e.logprobs, strict=True)) < 1e-5
    # new weights make the cached keys/values stale: nothing is reused after an update
    cached.update_weights(str(checkpoint), version=1)
    hits = cached.prefix.hit_tokens
    cached.generate(turn2[:1])
    assert cached.prefix.hit_tokens == hits and plain.prefix.hit_tokens == 0


def test_requests_with_the_same_prompt_share_one_prefill(engine, monkeypatch):
    prefilled: list[int] = []
    prefill = engine._prefill
    monkeypatch.setattr(
        engine, "_prefill", lambda prompts, slots: prefilled.append(len(prompts)) or prefill(prompts, slots)
    )
    same = [_request(1, seed=5), _request(1, seed=5, n=2), _request(1, temperature=0.0)]
    out = engine.generate(same)
    assert prefilled == [1]  # three requests, one prompt
    assert out[0][0].token_ids == out[1][0].token_ids != out[1][1].token_ids  # same seed and index
    assert out[2][0].token_ids == engine.generate([same[2]])[0][0].token_ids
