"""A Python tool implementation used by the runtime tests (`impl: af_test_fx:convert`)."""

RATES = {"EUR": 1.0, "USD": 1.1, "JPY": 160.0}


def convert(amount: float, source: str, target: str) -> dict:
    """Convert money between currencies; unknown currencies are a declared error (ValueError)."""
    if source not in RATES or target not in RATES:
        raise ValueError(f"unknown currency {source if source not in RATES else target}")
    return {"amount": round(amount / RATES[source] * RATES[target], 2), "currency": target}


def deposit(account: str, amount: float, state: dict) -> dict:
    """Change the world: a real tool that asks for `state` receives it (a copy, committed on success)."""
    if account not in state["accounts"]:
        raise KeyError(f"no account {account}")
    state["accounts"][account] += amount
    return {"balance": state["accounts"][account]}


def broken() -> None:
    return 1 / 0
