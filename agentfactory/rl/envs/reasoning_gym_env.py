"""ReasoningGymEnv: procedural reasoning tasks from the `reasoning-gym` package.

reasoning-gym generates unlimited, seeded, verifiable tasks (arithmetic chains, counting, word
puzzles, logic, graphs...) with a scorer per dataset (`dataset.score_answer(answer, entry)` in
[0, 1]). Difficulty is set by each dataset's own config (`dataset_config`). The policy answers inside
`<answer>...</answer>` (reasoning-gym's default system prompt); the extracted answer goes to the
dataset's scorer, so partial credit (some datasets give 0.01-0.5 for near misses) flows into the
reward as-is. The package is imported when the env is built (it takes ~1.5 s).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.records import Message, Trajectory
from agentfactory.rl.envs.base import EnvTask, SingleTurnEnv


class ReasoningGymConfig(StrictModel):
    dataset: str = Field("basic_arithmetic", description="a reasoning-gym dataset name, e.g. chain_sum")
    size: int = Field(1000, ge=1, description="distinct tasks; task for seed s is entry s % size")
    seed: int = Field(0, description="the dataset's generation seed (held-out sets use another)")
    dataset_config: dict[str, Any] = Field(default_factory=dict, description="the dataset's own options")
    system_prompt: str = Field("default", description="a key of reasoning_gym.utils.SYSTEM_PROMPTS")
    weights: dict[str, float] = Field(default_factory=dict)


class ReasoningGymEnv(SingleTurnEnv):
    """Tasks of one reasoning-gym dataset, scored by its `score_answer`."""

    kind = "reasoning"

    def __init__(self, config: ReasoningGymConfig | None = None):
        import reasoning_gym
        from reasoning_gym.utils import SYSTEM_PROMPTS

        self.config = config or ReasoningGymConfig()
        super().__init__(self.config.weights)
        self.name = f"rg.{self.config.dataset}"
        self.dataset = reasoning_gym.create_dataset(
            self.config.dataset, size=self.config.size, seed=self.config.seed, **self.config.dataset_config
        )
        self.system = SYSTEM_PROMPTS[self.config.system_prompt]

    def entry(self, seed: int) -> dict[str, Any]:
        return self.dataset[seed % self.config.size]

    def reset(self, seed: int) -> EnvTask:
        index = seed % self.config.size
        entry = self.entry(index)
        return EnvTask(
            id=f"{self.name}.{self.config.seed}.{index}",
            env=self.name,
            kind=self.kind,
            prompt=[
                Message(role="system", content=self.system),
                Message(role="user", content=entry["question"]),
            ],
            answer=str(entry["answer"]),
            meta={"index": index, "dataset": self.config.dataset},
        )

    def verify(self, task: EnvTask, trajectory: Trajectory) -> dict[str, Any]:
        from reasoning_gym.utils import extract_answer

        answer = extract_answer(trajectory.final_answer)
        entry = self.entry(int(task.meta["index"]))
        value = self.dataset.score_answer(answer=answer, entry=entry) if answer is not None else 0.0
        return {"correct": float(value), "format_ok": answer is not None}

    def validate(self, n: int = 20) -> None:
        """The gold answer in answer tags scores 1.0 for the first `n` tasks; raises otherwise."""
        for seed in range(min(n, self.config.size)):
            task = self.reset(seed)
            reply = f"<answer>{task.answer}</answer>"
            traj = Trajectory(
                task_id=task.id, messages=[*task.prompt, Message(role="assistant", content=reply)]
            )
            got = self.score(task, traj).components["correct"]
            if got != 1.0:
                raise AssertionError(f"{task.id}: the gold answer scored {got}")
