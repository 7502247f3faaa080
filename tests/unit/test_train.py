"""Trainer: SFT masking and bad rows, schedules, accumulation, exact resume, NaN stop, metrics."""

import json
import random

import pytest
import torch

from agentfactory.model import K2ForCausalLM, encode_with_mask, load_tokenizer, render, train_tokenizer
from agentfactory.train import (
    ChatData,
    CopyData,
    DataError,
    PretrainConfig,
    RecallData,
    ScheduleConfig,
    SFTConfig,
    TextData,
    TrainingDiverged,
    copy_rows,
    load_chat,
    load_recall,
    load_text,
    lr_multiplier,
    pretrain,
    sft,
)
from agentfactory.train.data import IGNORE, TokenDataset, sample_indices, step_rows

WORDS = "the order was shipped to customer and cancelled refund pending account balance for".split()


def _conversation(rnd: random.Random, i: int) -> dict:
    order = str(rnd.randint(1000, 9999))
    return {
        "id": f"conv-{i}",
        "messages": [
            {"role": "system", "content": "You help with orders."},
            {"role": "user", "content": f"Where is order {order}?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_order", "arguments": json.dumps({"order_id": order})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"status": rnd.choice(WORDS)})},
            {"role": "assistant", "content": f"Order {order} is {rnd.choice(WORDS)}."},
        ],
        "tools": json.dumps(  # exported datasets store tools as a JSON string
            [
                {
                    "type": "function",
                    "function": {
                        "name": "get_order",
                        "description": "Look up an order.",
                        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                    },
                }
            ]
        ),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer, a text corpus and a chat dataset, shared by the module's tests."""
    root = tmp_path_factory.mktemp("train")
    rnd = random.Random(0)
    docs = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 60))) for _ in range(120)]
    (root / "text.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    convs = [_conversation(rnd, i) for i in range(24)]
    convs.insert(5, {"id": "no-assistant", "messages": [{"role": "user", "content": "hi"}]})
    (root / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    texts = docs + [render(c["messages"], json.loads(c["tools"])) for c in convs[:10] if "tools" in c]
    train_tokenizer(texts, 400, root / "tok")
    return root


def _pretrain_config(corpus, out, **kw) -> PretrainConfig:
    base = dict(
        tokenizer=str(corpus / "tok"),
        model={"preset": "debug"},
        data={"paths": [str(corpus / "text.jsonl")], "seq_len": 48},
        optimizer={"lr": 0.02, "adamw_lr": 3e-3, "qk_clip_tau": 50.0},
        schedule={"warmup_steps": 2},
        steps=6,
        batch_size=8,
        micro_batch_size=4,
        output_dir=str(out),
        checkpoint_every=3,
        progress=False,
        save_model=False,
        threads=1,  # two intra-op threads crawl on a shared 2-core machine
    )
    return PretrainConfig(**{**base, **kw})


def _losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ schedule


def test_schedules():
    cos = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(5, 100, cos) == 0.5 and lr_multiplier(10, 100, cos) == 1.0
    assert lr_multiplier(100, 100, cos) == pytest.approx(0.1)
    assert lr_multiplier(55, 100, cos) == pytest.approx(0.55)
    wsd = ScheduleConfig(kind="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_multiplier(80, 100, wsd) == 1.0 and lr_multiplier(90, 100, wsd) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, wsd) == 0.0
    assert lr_multiplier(50, 100, ScheduleConfig(kind="constant", warmup_steps=0)) == 1.0


def test_sample_order_is_a_permutation_per_epoch():
    first, second = sample_indices(10, 0, 10, seed=3), sample_indices(10, 10, 10, seed=3)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert sample_indices(10, 7, 6, seed=3) == (first + second)[7:13]  # position is all the state


def test_length_groups_batch_similar_lengths_over_the_same_samples():
    lengths = [int(x) for x in torch.randint(10, 400, (97,), generator=torch.Generator().manual_seed(0))]
    rows = [torch.zeros(n, dtype=torch.long) for n in lengths]
    plain = TokenDataset(rows, rows, pad_id=0)
    grouped = TokenDataset(rows, rows, pad_id=0, length_groups=8)
    steps = range(24)  # three groups, crossing an epoch boundary (97 rows)
    a = [step_rows(plain, s * 4, 4, seed=1) for s in steps]
    b = [step_rows(grouped, s * 4, 4, seed=1) for s in steps]
    for g in range(3):  # each group of 8 steps sees the very samples plain batches would
        group = slice(g * 8, g * 8 + 8)
        assert sorted(r for x in a[group] for r in x) == sorted(r for x in b[group] for r in x)

    def padding(batches):
        return sum(len(x) * max(lengths[r] for r in x) - sum(lengths[r] for r in x) for x in batches)

    assert padding(b) < 0.25 * padding(a)
    assert b[5] == step_rows(grouped, 20, 4, seed=1)  # a pure function of the position: exact resume
    assert b != [step_rows(grouped, s * 4, 4, seed=2) for s in steps]
    with pytest.raises(ValueError, match="multiple of the batch size"):
        step_rows(grouped, 6, 4, seed=1)


def test_pretraining_text_is_packed_with_eos_separators(corpus, tmp_path):
    tok = load_tokenizer(corpus / "tok")
    (tmp_path / "a.txt").write_text("the order was shipped")
    conv = json.loads((corpus / "chat.jsonl").read_text().splitlines()[0])
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "refund pending"}) + "\n" + json.dumps(conv) + "\n")
    data = load_text(TextData(paths=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], seq_len=8), tok)
    stream = torch.cat(data.ids).tolist()
    eos = tok.convert_tokens_to_ids("[EOS]")
    docs = ["the order was shipped", "refund pending", render(conv["messages"], json.loads(conv["tools"]))]
    expected = [t for d in docs for t in [*tok.encode(d, add_special_tokens=False), eos]]
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 8  # only the tail is dropped
    assert all(len(row) == 8 for row in data.ids) and data.stats.rows == 3
    with pytest.raises(DataError, match="fewer than one row"):
        load_text(TextData(paths=[str(tmp_path / "a.txt")], seq_len=4096), tok)


def test_copy_curriculum_rows_repeat_a_random_list_with_loss_on_the_repeat_only(corpus):
    tok = load_tokenizer(corpus / "tok")
    data = CopyData(kind="copy", rows=40, items=(3, 6), filler=(0, 4), vocab=50, seed=1)
    rows = copy_rows(data, tok)
    sep = tok.encode("\nAgain:", add_special_tokens=False)
    note = tok.encode("Note:", add_special_tokens=False)
    offsets = set()
    for ids, labels in zip(rows.ids, rows.labels, strict=True):
        target = labels != IGNORE
        n = int(target.sum())
        repeat, before = ids[-n:].tolist(), ids[: -n - len(sep)].tolist()
        assert 3 <= n <= 6 and target[-n:].all() and labels[-n:].tolist() == repeat
        assert ids[-n - len(sep) : -n].tolist() == sep and before[-n:] == repeat  # list, separator, list
        assert before[-n - len(note) : -n] == note  # the list's start is marked
        filler = before[: -n - len(note)]
        assert all(16 <= t < 66 for t in filler + repeat)  # ordinary ids only, from the first `vocab`
        offsets.add(len(filler))
    assert offsets == set(range(5))  # the filler moves the repeat: no fixed offset to learn
    assert rows.stats.target_tokens == sum(int((lab != IGNORE).sum()) for lab in rows.labels)
    assert copy_rows(data, tok).fingerprint() == rows.fingerprint()  # seeded
    assert copy_rows(data.model_copy(update={"seed": 2}), tok).fingerprint() != rows.fingerprint()
    small = copy_rows(data.model_copy(update={"alphabet": (2, 2), "items": (8, 8)}), tok)
    for labels in small.labels:
        assert len(set(labels[labels != IGNORE].tolist())) <= 2  # repeats: copying needs more context


def test_pretrain_data_is_text_unless_kind_copy(corpus, tmp_path):
    cfg = _pretrain_config(corpus, tmp_path)
    assert isinstance(cfg.data, TextData)
    cfg = _pretrain_config(corpus, tmp_path, data={"kind": "copy", "rows": 64, "items": [2, 4]})
    assert isinstance(cfg.data, CopyData) and cfg.data.items == (2, 4)
    with pytest.raises(ValueError, match="items: lower bound 5 is above upper bound 4"):
        _pretrain_config(corpus, tmp_path, data={"kind": "copy", "items": [5, 4]})
    with pytest.raises(ValueError, match="paths"):  # a copy field on text data is not silently ignored
        _pretrain_config(corpus, tmp_path, data={"paths": [], "rows": 3})
    result = pretrain(cfg)
    assert result.steps == 6 and result.data.target_tokens < result.data.tokens / 2


def test_recall_curriculum_rows_copy_fresh_values_with_loss_on_the_repeat_only(corpus, tmp_path):
    tok = load_tokenizer(corpus / "tok")
    texts = [
        f"Customer {w} (id CUS-{1000 + i}, {w.lower()}{i}@example.com) asked about order ORD-{5000 + 7 * i}."
        for i, w in enumerate(WORDS * 2)
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = RecallData(kind="recall", paths=[str(tmp_path / "c.jsonl")], rows=30, items=(2, 4), gap=60)
    rows = load_recall(data, tok)
    assert len(rows) == 30 and rows.stats.target_tokens == sum(int((x != IGNORE).sum()) for x in rows.labels)
    for ids, labels in zip(rows.ids, rows.labels, strict=True):
        target = labels != IGNORE
        n = int(target.sum())
        assert target[-n:].all() and not target[:-n].any()  # the repeat, and only it, is a target
        doc = tok.decode(ids)
        listed = doc[len("Note: ") : doc.index(".\n")]
        assert tok.decode(ids[-n:]).strip() == f"{listed}." and doc.endswith(f"Again: {listed}.")
        assert listed not in "\n".join(texts)  # fresh values: only copying predicts the repeat
    assert load_recall(data, tok).fingerprint() == rows.fingerprint()  # seeded
    assert load_recall(data.model_copy(update={"seed": 1}), tok).fingerprint() != rows.fingerprint()
    cfg = _pretrain_config(corpus, tmp_path, data={"kind": "recall", "paths": [str(tmp_path / "c.jsonl")]})
    assert isinstance(cfg.data, RecallData) and cfg.data.items == (2, 10)
    result = pretrain(cfg.model_copy(update={"data": data}))  # the trainer takes it end to end
    assert result.steps == 6 and 0 < result.data.target_tokens < result.data.tokens / 2
    assert result.final_loss is not None and result.final_loss == result.final_loss  # finite, not NaN
    with pytest.raises(ValueError, match="items: lower bound 5 is above upper bound 4"):
        _pretrain_config(corpus, tmp_path, data={"kind": "recall", "paths": ["x"], "items": [5, 4]})
    (tmp_path / "plain.txt").write_text("no values in here at all")
    with pytest.raises(DataError, match="no ids, emails or dates"):
        load_recall(data.model_copy(update={"paths": [str(tmp_path / "plain.txt")]}), tok)


# ---------------------------------------------------------------------------------------- SFT data


def test_sft_labels_only_on_assistant_tokens(corpus, monkeypatch):
    tok = load_tokenizer(corpus / "tok")
    data = load_chat(ChatData(paths=[str(corpus / "chat.jsonl")]), tok)
    assert data.stats.rows == 25 and data.stats.used == 24 and data.stats.skipped_no_assistant == 1
    convs = [json.loads(line) for line in (corpus / "chat.jsonl").read_text().splitlines()]
    convs = [c for c in convs if any(m["role"] == "assistant" for m in c["messages"])]
    for k, conv in enumerate(convs):  # the batch encoding equals encoding each conversation alone
        ids, mask = encode_with_mask(tok, conv["messages"], json.loads(conv["tools"]))
        assert data.ids[k].tolist() == ids
        assert [int(x != IGNORE) for x in data.labels[k]] == mask
    monkeypatch.setattr("agentfactory.train.data.ENCODE_CHUNK", 5)  # batches that split the file
    assert load_chat(ChatData(paths=[str(corpus / "chat.jsonl")]), tok).fingerprint() == data.fingerprint()
    labels = data.labels[0]
    target_text = tok.decode([t for t in labels.tolist() if t != IGNORE])
    assert "get_order" in target_text and "<|tool_call_begin|>" in target_text  # tool calls are targets
    assert "You help with orders" not in target_text and "Where is order" not in target_text
    assert '"status"' not in target_text  # the tool result is context
    every = load_chat(ChatData(paths=[str(corpus / "chat.jsonl")], targets="all"), tok)
    assert [x.tolist() for x in every.ids] == [x.tolist() for x in data.ids]
    assert all((lab == ids).all() for lab, ids in zip(every.labels, every.ids, strict=True))
    assert every.stats.target_tokens == every.stats.tokens - every.stats.used  # all but each first token


def test_sft_reads_the_synthesis_export(corpus, tmp_path):
    # The synth stage's HF dataset rows (all message keys present, None where unset; tools as a JSON
    # string), from save_to_disk and from parquet, encode exactly like the plain OpenAI jsonl rows.
    from datasets import Dataset

    from agentfactory.records import Trajectory
    from agentfactory.synth.export import to_row

    lines = (corpus / "chat.jsonl").read_text().splitlines()
    convs = [json.loads(line) for line in lines if "tools" in json.loads(line)][:6]
    rows = [
        to_row(Trajectory.from_openai(c["id"], c["messages"], json.loads(c["tools"]), meta={"id": c["id"]}))
        for c in convs
    ]
    ds = Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    tok = load_tokenizer(corpus / "tok")
    plain = load_chat(ChatData(paths=[str(tmp_path / "plain.jsonl")]), tok)
    for path in ("hf", "data.parquet"):
        exported = load_chat(ChatData(paths=[str(tmp_path / path)]), tok)
        assert exported.stats.used == 6
        assert [t.tolist() for t in exported.ids] == [t.tolist() for t in plain.ids]
        assert [t.tolist() for t in exported.labels] == [t.tolist() for t in plain.labels]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"id": "bad-role", "messages": [{"role": "robot", "content": "x"}]}, r"row bad-role: messages\[0\]"),
        (
            {"id": "bad-tool", "messages": [{"role": "user", "content": "x"}], "tools": [{"function": {}}]},
            r"row bad-tool: tools\[0\]",
        ),
        ({"messages": []}, "row line 2: expected a non-empty 'messages' list"),
        (
            {
                "id": "bad-args",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    }
                ],
            },
            r"row bad-args: messages\[0\].*not valid JSON",
        ),
    ],
)
def test_invalid_rows_name_the_row(corpus, tmp_path, row, match):
    good = _conversation(random.Random(1), 0)
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    tok = load_tokenizer(corpus / "tok")
    with pytest.raises(DataError, match=match):
        load_chat(ChatData(paths=[str(path)]), tok)


def test_sft_trains_and_exports(corpus, tmp_path):
    config = SFTConfig(
        tokenizer=str(corpus / "tok"),
        model={"preset": "debug"},
        data={"paths": [str(corpus / "chat.jsonl")], "seq_len": 256},
        steps=4,
        batch_size=4,
        micro_batch_size=2,
        output_dir=str(tmp_path / "sft"),
        progress=False,
        threads=1,
    )
    result = sft(config)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "tokens_per_s", "grad_norm", "max_logit", "clipped_heads", "expert_load", "lr"):
        assert key in rows[0]
    assert len(rows[0]["max_logit"]) == 3 and len(rows[0]["expert_load"]) == 2
    assert rows[-1]["loss"] < rows[0]["loss"]
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["data"]["skipped_no_assistant"] == 1
    model = K2ForCausalLM.from_pretrained(result.model_dir)
    assert model.config.vocab_size == len(load_tokenizer(result.model_dir))


# ------------------------------------------------------------------------------ training mechanics


def test_resume_gives_the_same_losses(corpus, tmp_path):
    straight = pretrain(_pretrain_config(corpus, tmp_path / "a"))

    def crash_after_4(row):
        if row["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(_pretrain_config(corpus, tmp_path / "b"), on_step=crash_after_4)
    assert len(_losses(tmp_path / "b" / "metrics.jsonl")) == 4  # step 4 ran but was not checkpointed
    resumed = pretrain(_pretrain_config(corpus, tmp_path / "b"))
    assert _losses(resumed.metrics_path) == _losses(straight.metrics_path)  # exactly equal, 6 rows


def test_resume_refuses_other_data_and_resume_false_starts_afresh(corpus, tmp_path):
    pretrain(_pretrain_config(corpus, tmp_path / "run", steps=2))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": " ".join(WORDS[i:] + WORDS[:i])}) + "\n" for i in range(40)))
    changed = {"paths": [str(other)], "seq_len": 48}
    with pytest.raises(DataError, match="different data"):
        pretrain(_pretrain_config(corpus, tmp_path / "run", steps=3, data=changed))
    fresh = pretrain(_pretrain_config(corpus, tmp_path / "run", steps=3, data=changed, resume=False))
    assert [json.loads(line)["step"] for line in fresh.metrics_path.read_text().splitlines()] == [1, 2, 3]


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    # Newton–Schulz in float32 here: in bf16, the ~1e-7 differences of another summation order can flip
    # roundings of the bf16 input, which moves the loss by up to a few 1e-4 within a few steps.
    opt = {"lr": 0.02, "adamw_lr": 3e-3, "ns_dtype": "float32"}
    one = pretrain(_pretrain_config(corpus, tmp_path / "one", micro_batch_size=8, steps=3, optimizer=opt))
    four = pretrain(_pretrain_config(corpus, tmp_path / "four", micro_batch_size=2, steps=3, optimizer=opt))
    assert _losses(four.metrics_path) == pytest.approx(_losses(one.metrics_path), abs=1e-5)


def test_bfloat16_autocast_trains(corpus, tmp_path):
    result = pretrain(_pretrain_config(corpus, tmp_path / "bf16", dtype="bfloat16", steps=4))
    losses = _losses(result.metrics_path)
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    forward = K2ForCausalLM.forward
    calls = {"n": 0}

    def poisoned(self, input_ids, labels=None):
        out = forward(self, input_ids, labels)
        calls["n"] += 1
        if calls["n"] > 8:  # 2 micro-batches per step: step 5 onwards
            out.logits = out.logits * float("nan")
        return out

    monkeypatch.setattr(K2ForCausalLM, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 5: loss is nan.*checkpoint .* \(step 3\)"):
        pretrain(_pretrain_config(corpus, tmp_path / "nan"))
    state = json.loads((tmp_path / "nan" / "checkpoint" / "trainer.json").read_text())
    assert state["step"] == 3 and _losses(tmp_path / "nan" / "metrics.jsonl")[2] == state["loss"]


def test_bad_batch_split_is_a_config_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        _pretrain_config(corpus, tmp_path, batch_size=6, micro_batch_size=4)


def test_compiled_layers_train_like_eager(corpus, tmp_path, aot_eager_compile):
    eager = pretrain(_pretrain_config(corpus, tmp_path / "eager", steps=3))
    compiled = pretrain(_pretrain_config(corpus, tmp_path / "compiled", steps=3, compile=True))
    assert aot_eager_compile["aot_autograd"]["ok"] >= 3  # the dense layer, the MoE layer's two halves
    assert _losses(compiled.metrics_path) == pytest.approx(_losses(eager.metrics_path), rel=1e-4)


@pytest.mark.parametrize("fast", [False, True])
def test_dtype_auto_is_bfloat16_only_where_it_is_native(corpus, tmp_path, monkeypatch, fast):
    """`dtype: auto` trains exactly as float32 on a CPU without native bf16 (where bf16 runs ~20×
    slower) and as bfloat16 where it is native; Newton–Schulz's `auto` follows the same rule."""
    from agentfactory import devices

    monkeypatch.setattr(devices, "fast_bfloat16", lambda device_type: fast)
    want = "bfloat16" if fast else "float32"
    opt = {"lr": 0.02, "adamw_lr": 3e-3, "ns_dtype": want}
    ref = pretrain(_pretrain_config(corpus, tmp_path / "ref", dtype=want, steps=3, optimizer=opt))
    auto = pretrain(_pretrain_config(corpus, tmp_path / "auto", dtype="auto", steps=3))
    assert _losses(auto.metrics_path) == _losses(ref.metrics_path)
