"""Trainer configs: one small strict model per concern, composed into `PretrainConfig` / `SFTConfig`.

A YAML file maps onto these 1:1 (`load_config(path, SFTConfig, ["steps=50"])`), e.g.

    model: {preset: k2-mini}                # or {init_from: runs/pretrain/model}
    tokenizer: runs/tokenizer
    data: {paths: [runs/synth/dataset.jsonl], seq_len: 1024}
    optimizer: {lr: 0.02, adamw_lr: 0.003, qk_clip_tau: 30}
    schedule: {kind: cosine, warmup_steps: 20}
    steps: 300
    batch_size: 16
    micro_batch_size: 8
    output_dir: runs/sft
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, NonNegativeInt, PositiveFloat, PositiveInt, Tag, model_validator

from agentfactory.config import StrictModel
from agentfactory.model.config import PresetName
from agentfactory.optim import OptimizerConfig


class ModelSource(StrictModel):
    """Where the weights come from: a fresh preset (vocab size from the tokenizer) or a checkpoint."""

    preset: PresetName = Field("k2-mini", description="K2Config preset for a model trained from scratch")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="K2Config field overrides (vocab_size comes from the tokenizer)"
    )
    init_from: str | None = Field(
        None, description="HF DeepseekV3 checkpoint dir to start from (e.g. a pretrain run's model/)"
    )


class ScheduleConfig(StrictModel):
    """Learning-rate multiplier over the steps (applied to every group's peak lr)."""

    kind: Literal["cosine", "wsd", "constant"] = Field(
        "cosine", description="warmup then cosine decay | warmup-stable-decay | warmup then constant"
    )
    warmup_steps: NonNegativeInt = Field(10, description="linear warmup steps from 0 to the peak")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak")
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="WSD: the last fraction of steps that decays linearly to the minimum"
    )


class TextData(StrictModel):
    """Pretraining text, packed: documents joined with [EOS] and cut into seq_len rows."""

    kind: Literal["text"] = "text"
    paths: list[str] = Field(
        min_length=1, description=".txt files (one document each) or .jsonl rows with 'text' or 'messages'"
    )
    seq_len: PositiveInt = Field(256, description="tokens per packed row")


class CopyData(StrictModel):
    """A copy curriculum: rows of random tokens, a separator, then the same tokens again; the loss is
    on the repeat only. Filler of random length before the list moves the repeat's offset, so only
    content-addressed copying (an induction head) predicts it. Tool use is copying (an email the
    user gave, an id a tool returned) and k2-mini learns it from plain text too late for a CPU
    budget; this data makes it the one thing to learn (scripts/copy_probe.py measured it)."""

    kind: Literal["copy"]
    rows: PositiveInt = Field(20_000, description="distinct training rows (generated from `seed`)")
    items: tuple[PositiveInt, PositiveInt] = Field((4, 16), description="list length range (inclusive)")
    filler: tuple[NonNegativeInt, NonNegativeInt] = Field(
        (0, 7), description="random tokens before the list (inclusive range)"
    )
    vocab: PositiveInt | None = Field(
        None, description="draw tokens from the first N ordinary ids (None = the whole vocabulary)"
    )
    alphabet: tuple[PositiveInt, PositiveInt] | None = Field(
        None,
        description="per row, draw from a random subset of this many ids (log-uniform in the range): "
        "small alphabets repeat tokens within a list, so copying must match several previous tokens, "
        "as copying an id digit by digit does",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_ranges(self) -> CopyData:
        for name in ("items", "filler", "alphabet"):
            if getattr(self, name) is None:
                continue
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} is above upper bound {hi}")
        return self


class RecallData(StrictModel):
    """A recall curriculum: documents listing values in the corpus's formats (ids, emails, dates) with
    fresh content, some corpus text, then the list again; the loss is on the repeat only. Unlike
    random-token lists (`CopyData`), what the model learns here transfers to the corpus's own values
    (see train/recall.py for the measurements)."""

    kind: Literal["recall"]
    paths: list[str] = Field(
        min_length=1, description="corpus files (.txt / .jsonl 'text'): the values' formats and the gaps"
    )
    rows: PositiveInt = Field(5000, description="documents generated (from `seed`)")
    items: tuple[PositiveInt, PositiveInt] = Field((2, 10), description="list length range (inclusive)")
    gap: NonNegativeInt = Field(
        800, description="up to this many characters of corpus text between the list and its repeat"
    )
    keyed: float = Field(
        0.0, ge=0, le=1, description="share of documents that name each value and ask for it by name"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_items(self) -> RecallData:
        if self.items[0] > self.items[1]:
            raise ValueError(f"items: lower bound {self.items[0]} is above upper bound {self.items[1]}")
        return self


def _data_kind(value: Any) -> str:
    return (
        value.get("kind", "text") if isinstance(value, dict) else getattr(value, "kind", "text")
    ) or "text"


PretrainData = Annotated[
    Annotated[TextData, Tag("text")]
    | Annotated[CopyData, Tag("copy")]
    | Annotated[RecallData, Tag("recall")],
    Discriminator(_data_kind),
]


class ChatData(StrictModel):
    """SFT conversations: OpenAI `messages` + `tools` rows, rendered in the K2 chat format."""

    paths: list[str] = Field(
        min_length=1, description=".jsonl / .json / .parquet files or a datasets.save_to_disk folder"
    )
    seq_len: PositiveInt = Field(1024, description="longer conversations are truncated (and counted)")
    targets: Literal["assistant", "all"] = Field(
        "assistant",
        description="tokens the loss covers: the assistant's (SFT), or all (system, user and tool turns "
        "too: the values a tool call copies are said there, so the forward pass is not half wasted)",
    )
    length_groups: PositiveInt = Field(
        16,
        description="steps whose rows are drawn together and split by length (1 = plain random "
        "batches): a batch pads to its longest row, and random batches of the quickstart's "
        "conversations were 35% padding",
    )


class ParallelConfig(StrictModel):
    """How a torchrun job splits the model; dense parameters are always FSDP-sharded over all processes."""

    ep: PositiveInt = Field(
        1, description="expert-parallel degree: each rank holds n_routed_experts/ep routed experts"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each block in backward (keeps only block inputs)"
    )
    gpus: PositiveInt | None = Field(
        None, description="processes the job is planned for (`agentfactory model plan`); checked at launch"
    )

    @model_validator(mode="after")
    def _check(self) -> ParallelConfig:
        if self.gpus is not None and self.gpus % self.ep:
            raise ValueError(f"ep ({self.ep}) must divide gpus ({self.gpus})")
        return self


class TrainConfig(StrictModel):
    """What both trainers share; `PretrainConfig` and `SFTConfig` add their `data` section."""

    model: ModelSource = Field(default_factory=ModelSource)
    tokenizer: str = Field(description="tokenizer dir (agentfactory tokenizer train / load_tokenizer)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    steps: PositiveInt = Field(100, description="optimizer steps in total (a resumed run continues to it)")
    batch_size: PositiveInt = Field(16, description="sequences per optimizer step, over all processes")
    micro_batch_size: PositiveInt = Field(
        8, description="sequences per forward pass on one process; the rest is gradient accumulation"
    )
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="compute dtype (bfloat16 = autocast; weights and optimizer stay fp32); "
        "auto: bfloat16 where the device runs it natively, else float32",
    )
    grad_clip: PositiveFloat | None = Field(1.0, description="clip the global grad norm; None = off")
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer (GPU: +21% tokens/s; costs a minute of compiling)",
    )
    seed: int = Field(0, description="seeds the init and the data order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    threads: PositiveInt | None = Field(None, description="torch CPU threads per process; None = default")
    output_dir: str = Field("runs/train", description="checkpoint/, metrics.jsonl, model/, summary.json")
    checkpoint_every: NonNegativeInt = Field(50, description="steps between checkpoints; 0 = only at the end")
    resume: bool = Field(True, description="continue from output_dir/checkpoint when it exists")
    save_model: bool = Field(
        True, description="write the final HF checkpoint + tokenizer to output_dir/model"
    )
    progress: bool = Field(True, description="show a rich progress bar")

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        return self


class PretrainConfig(TrainConfig):
    data: PretrainData


class SFTConfig(TrainConfig):
    data: ChatData
