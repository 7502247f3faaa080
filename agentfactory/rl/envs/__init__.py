"""RL environments: a task source plus a scorer each (DESIGN §9), and weighted mixtures of them.

Envs whose dependencies are heavy (reasoning-gym, math-verify, the sandbox) import them only when
built or scoring, so importing this package stays light.
"""

from agentfactory.rl.envs.base import Env, EnvTask, SingleTurnEnv, response_trajectory, single_turn_rollout
from agentfactory.rl.envs.code_env import CodeEnv, CodeEnvConfig, extract_code, run_tests
from agentfactory.rl.envs.code_problems import PROBLEMS, CodeProblem
from agentfactory.rl.envs.math_env import MathEnv, MathEnvConfig, check_answer, generate_problem
from agentfactory.rl.envs.mixture import EnvMixture
from agentfactory.rl.envs.reasoning_gym_env import ReasoningGymConfig, ReasoningGymEnv
from agentfactory.rl.envs.rubric_env import RubricEnv, RubricEnvConfig
from agentfactory.rl.envs.tool_use import ToolUseEnv, ToolUseEnvConfig

__all__ = [
    "PROBLEMS",
    "CodeEnv",
    "CodeEnvConfig",
    "CodeProblem",
    "Env",
    "EnvMixture",
    "EnvTask",
    "MathEnv",
    "MathEnvConfig",
    "ReasoningGymConfig",
    "ReasoningGymEnv",
    "RubricEnv",
    "RubricEnvConfig",
    "SingleTurnEnv",
    "ToolUseEnv",
    "ToolUseEnvConfig",
    "check_answer",
    "extract_code",
    "generate_problem",
    "response_trajectory",
    "run_tests",
    "single_turn_rollout",
]
