"""RL post-training (DESIGN §9): envs, reward functions, the self-critique critic, the K1.5 loss,
the partial-rollout buffer and the colocated train/rollout loop (`rl_run(RLConfig)`).

`loss`, `config` and `loop` need torch and are resolved lazily, so `import agentfactory.rl` stays light.
"""

from typing import TYPE_CHECKING, Any

from agentfactory.rl.buffer import PartialRolloutBuffer, PartialRolloutConfig, Rollout, StepResult
from agentfactory.rl.critic import (
    Critic,
    CriticConfig,
    CriticRubric,
    RubricSet,
    load_rubrics,
    validate_rubrics,
)
from agentfactory.rl.envs import (
    CodeEnv,
    Env,
    EnvMixture,
    EnvTask,
    MathEnv,
    ReasoningGymEnv,
    RubricEnv,
    ToolUseEnv,
)
from agentfactory.rl.rewards import RewardFn, Sample, TokenBudget, reward, score
from agentfactory.rl.sandbox import SandboxConfig, SandboxResult, run_in_sandbox

if TYPE_CHECKING:
    from agentfactory.rl.config import EnvSpec, RLConfig
    from agentfactory.rl.loop import RLLoop
    from agentfactory.rl.loss import LossConfig, TemperatureSchedule, k1p5_loss, ptx_loss
    from agentfactory.rl.run import RLResult, rl_run

__all__ = [
    "CodeEnv",
    "Critic",
    "CriticConfig",
    "CriticRubric",
    "Env",
    "EnvMixture",
    "EnvSpec",
    "EnvTask",
    "LossConfig",
    "MathEnv",
    "PartialRolloutBuffer",
    "PartialRolloutConfig",
    "RLConfig",
    "RLLoop",
    "RLResult",
    "ReasoningGymEnv",
    "RewardFn",
    "Rollout",
    "RubricEnv",
    "RubricSet",
    "Sample",
    "SandboxConfig",
    "SandboxResult",
    "StepResult",
    "TemperatureSchedule",
    "TokenBudget",
    "ToolUseEnv",
    "k1p5_loss",
    "load_rubrics",
    "ptx_loss",
    "reward",
    "rl_run",
    "run_in_sandbox",
    "score",
    "validate_rubrics",
]

_LAZY = {
    **{n: "agentfactory.rl.loss" for n in ("LossConfig", "TemperatureSchedule", "k1p5_loss", "ptx_loss")},
    **{n: "agentfactory.rl.config" for n in ("EnvSpec", "RLConfig")},
    "RLLoop": "agentfactory.rl.loop",
    **{n: "agentfactory.rl.run" for n in ("RLResult", "rl_run")},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
