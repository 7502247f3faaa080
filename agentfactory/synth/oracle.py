"""The blueprint oracle: an agent that plays a task's reference solution (APIGen-MT's blueprint).

It needs no model, so it produces gold trajectories for tests, for validating that every task
template is solvable, and as an upper bound in evaluations.
"""

from __future__ import annotations

import json

from agentfactory.records import Message, RolloutStatus, Task, ToolCall, Trajectory
from agentfactory.tools.domain import Domain
from agentfactory.tools.runtime import ToolRuntime


def system_prompt(domain: Domain) -> str:
    """The agent's instructions for a domain: what the service is and the policy it must follow."""
    text = f"You are a helpful assistant for this service: {domain.description.strip()}"
    return f"{text}\n\nPolicy:\n{domain.policy.strip()}" if domain.policy.strip() else text


def play_blueprint(task: Task, domain: Domain) -> tuple[Trajectory, ToolRuntime]:
    """Execute the blueprint's calls against the task's world and answer with its facts."""
    runtime = ToolRuntime(domain, seed=task.meta.get("world_seed", 0), state=task.initial_state)
    messages = [
        Message(role="system", content=system_prompt(domain)),
        Message(role="user", content=task.user_goal),
    ]
    facts = list(task.blueprint.answer_facts) if task.blueprint else []
    for i, step in enumerate(task.blueprint.calls if task.blueprint else []):
        call = ToolCall(id=f"call_{i}", name=step.tool, arguments=step.args)
        messages.append(Message(role="assistant", tool_calls=[call]))
        result = runtime.call(step.tool, step.args)
        messages.append(Message(role="tool", tool_call_id=call.id, content=result.to_message_content()))
    answer = "Here is what I found: " + "; ".join(str(f) for f in facts) if facts else "Done."
    messages.append(Message(role="assistant", content=answer))
    specs = [s for s in domain.tool_specs() if s.name in task.tools]
    traj = Trajectory(
        task_id=task.id,
        messages=messages,
        tools=specs,
        status=RolloutStatus.completed,
        meta={"agent": "oracle", "calls": json.loads(json.dumps([r.model_dump() for r in runtime.history]))},
    )
    return traj, runtime
