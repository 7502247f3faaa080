"""Byte-level BPE tokenizer with the Kimi K2 special tokens, saved as a Hugging Face tokenizer.

Trained with `tokenizers` on a text corpus; saved with the chat template (`chat_template.jinja`, the K2
format of `chat.py`) inside tokenizer_config.json, so `transformers.AutoTokenizer.from_pretrained(dir)` and
vLLM load it offline and render chats exactly as `chat.render` does.

Choices, and why:
- Byte-level: every string is encodable, no [UNK] ever appears (the token exists for tools that expect it).
- Digits never merge with letters, and a number tokenizes the same wherever it stands, so copying it
  is token-for-token copying. `digits="single"` (the default) gives one token per digit; `"pairs"` cuts a
  digit run into two-digit pieces from the left (`7698` -> `76`,`98`): half the tokens to copy, and
  each 10x rarer in the context, so an induction head finds the place to copy from with less
  ambiguity; `"runs"` lets BPE merge whole digit runs (a number's split then depends on BPE's merges).
- Spaces end a word instead of starting the next (`"is "`, `"os"`, where GPT-2-style BPE has `"is"`,
  `" os"`): a value the user typed after a space then tokenizes exactly as it does after the `"` of a
  JSON tool argument, so copying it into a tool call is token-for-token copying. With leading spaces
  only 55 % of the quickstart's argument values appeared token-identical in their context (the first
  token differed, often the split too: `' o','s','bor'` vs `'os','bor'`); with trailing spaces 99 %
  (the rest: values followed by a space, whose last token differs, `"com "` vs `"com"`), at the same
  token count. `spaces="leading"` keeps the GPT-2 convention.
- Special tokens take ids 0..15 in `chat.SPECIAL_TOKENS` order, the same for every vocab size; the
  eos token is `<|im_end|>` (where an assistant turn, and so generation, stops) and `[EOS]` stays
  available as a document separator for pretraining. No BOS/EOS is added on encode (Kimi K2 adds none).
- `<think>`/`</think>` are atomic but not "special": they survive `decode(skip_special_tokens=True)`, so
  reasoning parsers still see them; the tool-call markers are special (vLLM turns skipping off for tools).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agentfactory.model.chat import (
    BOS,
    CHAT_TEMPLATE,
    IM_END,
    PAD,
    SPECIAL_TOKENS,
    THINK_BEGIN,
    THINK_END,
    UNK,
    render,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

NON_SPECIAL = (THINK_BEGIN, THINK_END)  # atomic added tokens that decoding never skips
# Pre-token pieces with the space at the end: a word or a punctuation run takes one following space;
# a digit run (pre-split by `digits`) never does, so digits read the same
# everywhere; any other whitespace run stands alone.
TRAILING_SPACE_PATTERN = r"\p{L}+ ?|[^\s\p{L}\p{N}]+ ?|\p{N}+|\s+"


def _added_token(content: str):
    from tokenizers import AddedToken

    return AddedToken(content, special=content not in NON_SPECIAL, normalized=False)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path | None = None,
    *,
    min_frequency: int = 2,
    model_max_length: int = 131072,
    digits: Literal["single", "pairs", "runs"] = "single",
    spaces: Literal["trailing", "leading"] = "trailing",
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens in total (special tokens and the 256 byte symbols
    included) on `texts`; save it to `out_dir` when given. Deterministic for a given corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    n_min = len(SPECIAL_TOKENS) + 256
    if vocab_size < n_min:
        raise ValueError(
            f"vocab_size must be at least {n_min} (special tokens + 256 bytes), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    words = (
        [
            pre_tokenizers.Split(Regex(TRAILING_SPACE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
        if spaces == "trailing"
        else [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]  # GPT-2's regex
    )
    numbers = {
        "single": [pre_tokenizers.Digits(individual_digits=True)],
        "pairs": [pre_tokenizers.Split(Regex(r"\d{1,2}"), behavior="isolated")],
        "runs": [pre_tokenizers.Digits(individual_digits=False)],
    }
    if digits not in numbers:
        raise ValueError(f"digits must be one of {', '.join(numbers)}, got {digits!r}")
    tok.pre_tokenizer = pre_tokenizers.Sequence([*numbers[digits], *words])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only; adds no tokens
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[_added_token(t) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = wrap_tokenizer(tok, model_max_length=model_max_length)
    if out_dir is not None:
        save_tokenizer(hf, out_dir)
    return hf


def wrap_tokenizer(tok, *, model_max_length: int = 131072) -> PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` holding `SPECIAL_TOKENS` as a `PreTrainedTokenizerFast` with the chat
    template and the named special tokens set."""
    from transformers import PreTrainedTokenizerFast

    tok.add_special_tokens([_added_token(t) for t in SPECIAL_TOKENS if t not in NON_SPECIAL])
    tok.add_tokens([_added_token(t) for t in NON_SPECIAL])
    named = {BOS, IM_END, PAD, UNK}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in named and t not in NON_SPECIAL],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Save as a HF tokenizer dir, the chat template inside tokenizer_config.json (readable by old and
    new `transformers` and by vLLM) rather than only in a chat_template.jinja file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out), save_jinja_files=False)
    return out


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer offline and check that every K2 special token is a single token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.convert_tokens_to_ids(t) != i:
            raise ValueError(f"{path}: special token {t} does not have id {i}")
    if not tok.chat_template:
        raise ValueError(f"{path}: tokenizer has no chat template")
    return tok


def _record_text(record: dict) -> str | None:
    if record.get("messages"):
        messages = [{k: v for k, v in m.items() if v is not None} for m in record["messages"]]
        tools = record.get("tools")
        return render(messages, json.loads(tools) if isinstance(tools, str) else tools)
    return record["text"] if isinstance(record.get("text"), str) else None


def iter_corpus(paths: Iterable[str | Path]) -> Iterator[str]:
    """Training texts from files: `.jsonl` / `.parquet` records (or a `datasets.save_to_disk` dir)
    with `messages` (+ `tools`, a list or a JSON string) are rendered in the chat format, so merges
    also cover the format's own text (`functions.`, `## Return of`, JSON punctuation); records with
    `text` give that text; any other file gives its non-empty lines."""
    for path in map(Path, paths):
        if path.suffix == ".parquet" or path.is_dir():
            import datasets

            ds = (
                datasets.Dataset.from_parquet(str(path))
                if path.suffix == ".parquet"
                else datasets.load_from_disk(str(path))
            )
            for record in ds:
                if (text := _record_text(record)) is not None:
                    yield text
            continue
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if path.suffix != ".jsonl":
                    yield line
                    continue
                if (text := _record_text(json.loads(line))) is not None:
                    yield text
