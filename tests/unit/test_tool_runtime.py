"""The tool runtime: argument validation, declared errors, preconditions, effects, real and simulated modes."""

from pathlib import Path

import pytest

from agentfactory.tools import load_domain
from agentfactory.tools.domain import Domain
from agentfactory.tools.runtime import ToolResult, ToolRuntime, state_hash
from agentfactory.tools.world import generate_world, world_of

RETAIL = Path(__file__).parents[2] / "tools_repo" / "domains" / "retail_orders.yaml"


@pytest.fixture(scope="module")
def retail() -> Domain:
    return load_domain(RETAIL)


def orders_with(rt: ToolRuntime, status: str) -> list[str]:
    return sorted(k for k, o in rt.state["orders"].items() if o["status"] == status)


def test_worlds_are_deterministic_per_seed_and_valid(retail):
    assert generate_world(retail, 3) == generate_world(retail, 3)
    assert generate_world(retail, 3) != generate_world(retail, 4)
    w = generate_world(retail, 3)
    assert 6 <= len(w["users"]) <= 10 and 12 <= len(w["orders"]) <= 20
    assert all(o["user"] in w["users"] for o in w["orders"].values())
    assert all(i["product"] in w["products"] for o in w["orders"].values() for i in o["items"])


def test_cached_worlds_are_fresh_copies(retail, monkeypatch):
    import agentfactory.tools.world as world

    calls = []
    real = world.generate_world
    monkeypatch.setattr(world, "generate_world", lambda d, s: calls.append(s) or real(d, s))
    retail._worlds.clear()
    a, b = ToolRuntime(retail, seed=5), ToolRuntime(retail, seed=5)
    assert a.state == b.state == generate_world(retail, 5) and calls == [5]  # generated once
    a.state["users"].clear()  # one episode's writes never reach another's world
    assert world_of(retail, 5) == b.state == generate_world(retail, 5)


def test_invalid_arguments_are_tool_errors_and_change_nothing(retail):
    rt = ToolRuntime(retail, seed=1)
    before = rt.state_hash()
    r = rt.call("cancel_order", {"order_id": 5, "reason": "bored", "force": True})
    assert not r.ok
    assert "invalid arguments for cancel_order" in r.error
    assert (
        "5 is not of type 'string'" in r.error and "'bored' is not one of" in r.error and "force" in r.error
    )
    assert rt.call("cancel_order", ["W1"]).error == "arguments of cancel_order must be a JSON object"
    assert rt.call("refund_everything", {}).error.startswith("unknown tool 'refund_everything'")
    assert rt.state_hash() == before and len(rt.history) == 3


def test_declared_errors_preconditions_and_effects(retail):
    rt = ToolRuntime(retail, seed=1)
    assert rt.call("get_order", {"order_id": "W0000000"}).error == "order W0000000 not found"
    pending, shipped = orders_with(rt, "pending")[0], orders_with(rt, "shipped")[0]
    before = rt.state_hash()
    r = rt.call("cancel_order", {"order_id": shipped, "reason": "no longer needed"})
    assert r.error == f"order {shipped} cannot be cancelled: it is shipped"
    assert rt.state_hash() == before
    r = rt.call("cancel_order", {"order_id": pending, "reason": "ordered by mistake"})
    assert r.ok and r.content["status"] == "cancelled" and r.content["cancel_reason"] == "ordered by mistake"
    assert rt.state["orders"][pending]["status"] == "cancelled" and rt.state_hash() != before
    again = rt.call("cancel_order", {"order_id": pending, "reason": "ordered by mistake"})
    assert again.error == f"order {pending} cannot be cancelled: it is cancelled"


def test_lookups_and_filters(retail):
    rt = ToolRuntime(retail, seed=2)
    uid, user = sorted(rt.state["users"].items())[0]
    r = rt.call("find_user_by_email", {"email": user["email"].upper()})
    assert r.content == {"user_id": uid, "name": user["name"]}
    orders = rt.call("list_user_orders", {"user_id": uid}).content
    assert orders == {k: o for k, o in rt.state["orders"].items() if o["user"] == uid}
    assert (
        rt.call("find_user_by_email", {"email": "nobody@nowhere.org"}).error
        == "no customer with email nobody@nowhere.org"
    )


def test_state_hash_is_canonical():
    assert state_hash({"a": 1, "b": [1, {"c": 2}]}) == state_hash({"b": [1, {"c": 2}], "a": 1})
    assert state_hash({"a": 1}) != state_hash({"a": 1.5})


FX_DOMAIN = """
name: fx_desk
category: finance
description: Currency conversion and deposits.
state:
  schema: {type: object, properties: {accounts: {type: object, additionalProperties: {type: number}}}}
  seed: {accounts: {A1: 10.0}}
tools:
  - name: convert
    description: Convert an amount between currencies.
    impl: af_test_fx:convert
    parameters:
      type: object
      properties: {amount: {type: number}, source: {type: string}, target: {type: string, default: EUR}}
      required: [amount, source]
  - name: deposit
    description: Deposit money.
    impl: af_test_fx:deposit
    parameters: {type: object, properties: {account: {type: string}, amount: {type: number}}, required: [account, amount]}
  - name: broken
    description: Always crashes.
    impl: af_test_fx:broken
  - name: market_news
    description: Simulated market news.
    mode: simulated
    parameters: {type: object, properties: {topic: {type: string}}}
  - name: open_account
    description: Open an account with a fresh id.
    let: {new: "new_id('A', '/accounts')"}
    effect: [{op: add, path: "/accounts/{new}", value: {expr: "0.0"}}]
    returns: {account: "new", today: "today()"}
"""


@pytest.fixture
def fx(tmp_path, monkeypatch) -> Domain:
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "data" / "impl"))
    (tmp_path / "fx.yaml").write_text(FX_DOMAIN)
    return load_domain(tmp_path / "fx.yaml")


def test_real_python_tools(fx):
    rt = ToolRuntime(fx, seed=0)
    assert rt.call("convert", {"amount": 11, "source": "USD"}).content == {"amount": 10.0, "currency": "EUR"}
    assert rt.call("convert", {"amount": 1, "source": "XXX"}).error == "unknown currency XXX"
    assert rt.call("deposit", {"account": "A1", "amount": 5}).content == {"balance": 15.0}
    assert rt.state["accounts"]["A1"] == 15.0
    assert rt.call("deposit", {"account": "B9", "amount": 5}).error == "no account B9"
    assert rt.state["accounts"] == {"A1": 15.0}
    assert rt.call("broken", {}).error == "broken crashed: ZeroDivisionError: division by zero"


def test_generated_ids_and_simulated_mode(fx):
    rt = ToolRuntime(fx, seed=0)
    first = rt.call("open_account", {}).content
    second = rt.call("open_account", {}).content
    assert first["account"] != second["account"] and set(rt.state["accounts"]) >= {
        first["account"],
        second["account"],
    }
    assert first["today"] == "2025-01-01"
    assert "no simulator is configured" in rt.call("market_news", {"topic": "fx"}).error

    class Echo:
        def simulate(self, tool, arguments, state, history):
            return ToolResult(
                ok=True, content={"tool": tool.name, "args": arguments, "calls_before": len(history)}
            )

    rt = ToolRuntime(fx, seed=0, simulator=Echo())
    rt.call("open_account", {})
    assert rt.call("market_news", {"topic": "fx"}).content == {
        "tool": "market_news",
        "args": {"topic": "fx"},
        "calls_before": 1,
    }
