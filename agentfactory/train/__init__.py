"""Pretrain / SFT trainer for K2 models with MuonClip: data, schedule, checkpoint + exact resume, FSDP2.

Entry points: `pretrain(PretrainConfig)` and `sft(SFTConfig)` (what `agentfactory train pretrain|sft`
calls), or `torchrun --nproc_per_node N -m agentfactory.train pretrain|sft CONFIG [--set k=v ...]`.
"""

from agentfactory.train.config import (
    ChatData,
    CopyData,
    ModelSource,
    ParallelConfig,
    PretrainConfig,
    RecallData,
    ScheduleConfig,
    SFTConfig,
    TextData,
    TrainConfig,
)
from agentfactory.train.data import (
    DataError,
    DataStats,
    copy_rows,
    load_chat,
    load_pretrain,
    load_recall,
    load_text,
    recall_rows,
)
from agentfactory.train.schedule import lr_multiplier
from agentfactory.train.trainer import (
    Trainer,
    TrainingDiverged,
    TrainResult,
    build_model,
    pretrain,
    sft,
    train,
)

__all__ = [
    "ChatData",
    "CopyData",
    "DataError",
    "DataStats",
    "ModelSource",
    "ParallelConfig",
    "PretrainConfig",
    "RecallData",
    "SFTConfig",
    "ScheduleConfig",
    "TextData",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "copy_rows",
    "load_chat",
    "load_pretrain",
    "load_recall",
    "load_text",
    "lr_multiplier",
    "pretrain",
    "recall_rows",
    "sft",
    "train",
]
