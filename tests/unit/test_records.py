"""Records convert to and from the OpenAI chat format, checked with the `openai` SDK's own types."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import TypeAdapter, ValidationError

from agentfactory.records import (
    FinalStateCheck,
    JudgeVerdict,
    Message,
    RewardBreakdown,
    RolloutStatus,
    Rubric,
    Task,
    ToolCall,
    ToolSpec,
    Trajectory,
)

MESSAGES = TypeAdapter(list[ChatCompletionMessageParam])
TOOLS = TypeAdapter(list[ChatCompletionToolParam])


def conversation() -> Trajectory:
    call = ToolCall(id="call_0", name="get_order", arguments={"order_id": "W123", "opts": {"verbose": True}})
    return Trajectory(
        task_id="t1",
        messages=[
            Message(role="system", content="You are a shop assistant."),
            Message(role="user", content="Where is my order W123?"),
            Message(role="assistant", content=None, tool_calls=[call]),
            Message(role="tool", content='{"status": "shipped"}', tool_call_id="call_0"),
            Message(role="assistant", content="It has shipped."),
        ],
        tools=[ToolSpec(name="get_order", description="Look up an order.", domain="retail_orders")],
        status=RolloutStatus.completed,
        reward=RewardBreakdown.combine(
            {"rubric": 1.0, "format": 0.5, "turns": 3}, {"rubric": 0.8, "format": 0.2}
        ),
    )


def test_openai_format_validates_with_sdk_types():
    data = conversation().to_openai()
    MESSAGES.validate_python(data["messages"], strict=True)
    TOOLS.validate_python(data["tools"], strict=True)
    call = data["messages"][2]["tool_calls"][0]
    assert isinstance(call["function"]["arguments"], str)  # the OpenAI convention
    assert json.loads(call["function"]["arguments"]) == {"order_id": "W123", "opts": {"verbose": True}}


def test_trajectory_round_trips_through_openai_and_json():
    traj = conversation()
    data = traj.to_openai()
    back = Trajectory.from_openai(
        "t1", data["messages"], data["tools"], status="completed", reward=traj.reward
    )
    assert back.messages == traj.messages
    assert [t.to_openai() for t in back.tools] == data["tools"]
    assert Trajectory.model_validate_json(traj.model_dump_json()) == traj
    assert traj.final_answer == "It has shipped."
    assert [c.name for c in traj.tool_calls] == ["get_order"]


def test_reward_breakdown_weights_and_metrics():
    r = conversation().reward
    assert r.total == pytest.approx(0.8 * 1.0 + 0.2 * 0.5)  # 'turns' has no weight: a metric
    assert r.components["turns"] == 3


def test_records_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError):
        Message(role="robot", content="hi")
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "content": "x", "extra": 1})
    with pytest.raises(ValidationError):
        JudgeVerdict(accepted=True, score=1.5)
    with pytest.raises(ValueError, match="not valid JSON"):
        ToolCall.from_openai({"id": "c", "function": {"name": "f", "arguments": "{oops"}})
    with pytest.raises(ValueError, match="JSON object"):
        ToolCall.from_openai({"id": "c", "function": {"name": "f", "arguments": "[1, 2]"}})


def test_rubric_checks_are_a_discriminated_union():
    rubric = Rubric.model_validate(
        {
            "checks": [
                {"kind": "final_state", "path": "/orders/W1/status", "equals": "cancelled"},
                {"kind": "must_call", "tool": "cancel_order", "args": {"order_id": "W1"}},
                {"kind": "llm_criterion", "criterion": "polite", "weight": 0.5},
            ]
        }
    )
    assert isinstance(rubric.checks[0], FinalStateCheck)
    assert [c.kind for c in rubric.programmatic] == ["final_state", "must_call"]
    assert rubric.llm_criteria[0].weight == 0.5
    with pytest.raises(ValidationError):
        Rubric.model_validate({"checks": [{"kind": "vibes"}]})
    task = Task(id="t", domain="d", user_goal="g", rubric=rubric)
    assert Task.model_validate_json(task.model_dump_json()) == task


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    name=names,
    args=st.dictionaries(st.text(), json_value, max_size=5),
    content=st.text(),
    call_id=st.text(min_size=1),
)
def test_round_trip_arbitrary_arguments_and_unicode(name, args, content, call_id):
    msgs = [
        Message(role="user", content=content),
        Message(
            role="assistant",
            content=content or None,
            tool_calls=[ToolCall(id=call_id, name=name, arguments=args)],
        ),
        Message(role="tool", content=content, tool_call_id=call_id),
    ]
    data = [m.to_openai() for m in msgs]
    MESSAGES.validate_python(data)
    wire = json.loads(json.dumps(data))  # through the wire format
    assert [Message.from_openai(m) for m in wire] == msgs
