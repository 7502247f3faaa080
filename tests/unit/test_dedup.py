"""Tool dedup: exact schema duplicates, MinHash near-duplicates, and semantic duplicates (real MiniLM)."""

import pytest

from agentfactory.records import ToolSpec
from agentfactory.tools.dedup import dedup_tools, minilm_embed, schema_hash


def spec(name, description, props=("order_id",), domain="d"):
    params = {
        "type": "object",
        "properties": {p: {"type": "string", "description": f"the {p}"} for p in props},
    }
    return ToolSpec(name=name, description=description, parameters=params, domain=domain)


BASE = [
    spec("cancel_order", "Cancel a pending order by its id."),
    spec("get_weather", "Current weather conditions for a city.", ("city",)),
    spec("transfer_funds", "Move money between two bank accounts.", ("source", "target", "amount")),
]


def test_exact_duplicates_ignore_prose_and_key_order():
    a = spec("cancel_order", "Cancel a pending order by its id.")
    b = ToolSpec(
        name="Cancel_Order",
        description="Totally different words.",
        parameters={"properties": {"order_id": {"type": "string"}}, "type": "object"},
        domain="other",
    )
    assert schema_hash(a) == schema_hash(b)
    assert schema_hash(a) != schema_hash(spec("cancel_order", "x", ("order_id", "reason")))
    report = dedup_tools([a, b, *BASE[1:]], semantic_threshold=None)
    assert [m.reason for m in report.merged] == ["exact"]
    assert report.merged[0].kept == "d.cancel_order" and report.merged[0].dropped == "other.Cancel_Order"


def test_near_duplicates_by_minhash():
    reworded = spec("cancel_order_v2", "Cancel a pending order by its id.", ("order_id", "reason"))
    report = dedup_tools([*BASE, reworded], semantic_threshold=None)
    assert [(m.reason, m.dropped) for m in report.merged] == [("near", "d.cancel_order_v2")]
    assert report.merged[0].score >= 0.7
    assert len(report.kept) == 3


@pytest.fixture(scope="module")
def embed():
    return minilm_embed


def test_semantic_duplicates_with_real_embeddings(embed):
    paraphrase = spec(
        "abort_purchase",
        "Abort a purchase that has not shipped yet, given the purchase number.",
        ("purchase_id",),
    )
    unrelated = spec("list_playlists", "List the music playlists of a user.", ("user_id",))
    report = dedup_tools([*BASE, paraphrase, unrelated], semantic_threshold=0.6, embed=embed)
    reasons = {m.dropped: (m.reason, m.kept) for m in report.merged}
    assert reasons == {"d.abort_purchase": ("semantic", "d.cancel_order")}, report.merged
    assert [s.name for s in report.kept] == [
        "cancel_order",
        "get_weather",
        "transfer_funds",
        "list_playlists",
    ]
    assert report.counts() == {"input": 5, "kept": 4, "exact": 0, "near": 0, "semantic": 1}
    sims = embed(["cancel an order", "cancel a purchase", "weather forecast"])
    assert sims[0] @ sims[1] > 0.6 > sims[0] @ sims[2]
