"""The domain expression language: templates, pointer reads, where/pick/first, and its errors."""

import pytest

from agentfactory.tools.expr import ExprError, evaluate, parse, render, render_value, resolve_pointer

STATE = {
    "orders": {
        "W1": {"user": "u1", "status": "pending", "total": 10.0},
        "W2": {"user": "u2", "status": "shipped", "total": 25.5},
        "a/b": {"user": "u1", "status": "pending", "total": 1.0},
    },
    "users": {"u1": {"email": "ann@example.com"}, "u2": {"email": "bo@example.com"}},
    "log": [1, 2, 3],
}


def test_templates_keep_raw_values_and_escape_pointers():
    assert render("{n}", {"n": [1, 2]}) == [1, 2]
    assert render("order {n}!", {"n": 5}) == "order 5!"
    assert render("/orders/{id}/status", {"id": "a/b"}, pointer=True) == "/orders/a~1b/status"
    assert render_value({"x": ["{a}", "k-{a}"]}, {"a": 3}) == {"x": [3, "k-3"]}
    with pytest.raises(ExprError, match="unknown variable 'b'"):
        render("{b}", {"a": 1})


def test_pointers_read_state_and_missing_is_none():
    assert resolve_pointer(STATE, "/orders/W1/status") == "pending"
    assert resolve_pointer(STATE, "/log/2") == 3
    assert resolve_pointer(STATE, "/log/9") is None
    assert resolve_pointer(STATE, "/orders/W9/status") is None
    assert evaluate("/orders/{id}/status == 'pending'", {"id": "W1"}, STATE) is True
    assert evaluate("/orders/{id}/status == 'pending'", {"id": "a/b"}, STATE) is True
    assert evaluate("!exists(/orders/{id})", {"id": "W9"}, STATE) is True
    assert evaluate("/orders/W2/total / 2 + 1", {}, STATE) == pytest.approx(13.75)
    assert evaluate("x/2", {"x": 8}, STATE) == 4  # division, not a pointer
    assert evaluate("'/orders' + '!'", {}, STATE) == "/orders!"  # strings are not rewritten
    assert evaluate("a != b", {"a": 1, "b": 2}, STATE) is True


def test_where_first_and_collections():
    pending = evaluate("where(/orders, \"status == 'pending'\")", {}, STATE)
    assert set(pending) == {"W1", "a/b"}
    assert evaluate("first(where(/users, 'email', e))", {"e": "bo@example.com"}, STATE) == "u2"
    assert evaluate("first(where(/users, 'email', e))", {"e": "x@y.z"}, STATE) is None
    assert evaluate("sum(values(where(/orders, 'user', 'u1')) and [1, 2])", {}, STATE) == 3
    assert evaluate("len(where(/orders, 'total > limit'))", {"limit": 5}, STATE) == 2  # outer names visible
    picks = {evaluate("pick(keys(/orders))", {}, STATE, {"pick": lambda c: c[-1]})}
    assert picks == {"a/b"}


def test_parse_collects_names_and_pointers_and_rejects_unsafe_syntax():
    e = parse("status == 'pending' and /orders/{order_id}/total > limit")
    assert e.names == {"status", "order_id", "limit"}
    assert e.pointers == ("/orders/{order_id}/total",)
    assert parse("[o['total'] for o in values(/orders) if o['user'] == u]").names == {"u"}
    assert (
        evaluate("sum([o['total'] for o in values(/orders) if o['user'] == u])", {"u": "u1"}, STATE) == 11.0
    )
    for bad in ("x.__class__", "lambda: 1", "(y := 2)", "foo(", "", "where(/orders, status)"):
        with pytest.raises(ExprError):
            parse(bad)
    with pytest.raises(ExprError, match="unknown name 'nope'"):
        evaluate("nope + 1", {}, STATE)
    with pytest.raises(ExprError, match="cannot evaluate"):
        evaluate("1 / 0", {}, STATE)
