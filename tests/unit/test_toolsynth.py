"""LLM tool synthesis with a scripted engine: valid drafts are accepted, invalid ones repaired once,
garbage is dropped with its reason — and every step is recorded."""

import json

from agentfactory.synth.toolsynth import ToolSynthConfig, check_domain, synthesize_tools
from agentfactory.tools import load_categories, load_domain
from agentfactory.tools.scaffold import scaffold

from .fakes import ScriptedEngine


def test_check_domain_runs_loader_world_and_oracle():
    cats = load_categories()
    assert check_domain(scaffold("good_desk", "crm"), 2, cats) is None
    broken = scaffold("bad_desk", "crm").replace("must_call: [get_booking]", "must_call: [get_bookings]")
    assert "unknown tool 'get_bookings'" in check_domain(broken, 2, cats)
    unsolvable = scaffold("bad_desk", "crm").replace(
        'answer_contains: ["cancelled"]', 'answer_contains: ["refunded"]'
    )
    assert "does not pass its own rubric" in check_domain(unsolvable, 2, cats)


def test_hierarchy_accepts_repairs_and_drops(tmp_path):
    def reply(request):
        prompt = request.messages[0].content
        if prompt.startswith("Category:"):
            return 'Sure! ```json\n[{"name": "Pet Clinic", "description": "vets"}, {"name": "dog_spa", "description": "grooming"}]\n```'
        if prompt.startswith("Service: pet_clinic"):
            return json.dumps({"state": {"bookings": "visits"}, "tools": [{"name": "get_booking"}]})
        if prompt.startswith("Service: dog_spa"):
            return "I would rather not."
        if (
            prompt.startswith("Write the agentfactory domain file for this service")
            and "name: pet_clinic" in prompt
        ):
            return (
                "```yaml\n" + scaffold("pet_clinic", "crm").replace("category: crm", "category: crmm") + "```"
            )
        if prompt.startswith("The domain file you wrote is invalid"):
            assert "unknown category 'crmm'" in prompt  # the exact errors are fed back
            return scaffold("pet_clinic", "crm")
        raise AssertionError(prompt[:80])

    cfg = ToolSynthConfig(categories=["crm"], per_category=2, worlds=2)
    drafts = synthesize_tools(lambda: ScriptedEngine(reply), cfg, tmp_path, use_ray=False)
    by_name = {d.name: d for d in drafts}
    assert by_name["pet_clinic"].accepted and by_name["pet_clinic"].repaired
    assert not by_name["dog_spa"].accepted and "unusable tool set" in by_name["dog_spa"].reason
    assert load_domain(tmp_path / "domains" / "pet_clinic.yaml").name == "pet_clinic"
    assert not (tmp_path / "domains" / "dog_spa.yaml").exists()
    report = [json.loads(line) for line in (tmp_path / "drafts.jsonl").read_text().splitlines()]
    assert {r["name"] for r in report} == {"pet_clinic", "dog_spa"}


def test_garbage_domain_list_is_a_recorded_failure(tmp_path):
    drafts = synthesize_tools(
        lambda: ScriptedEngine(lambda r: "<|im_end|>???"),
        ToolSynthConfig(categories=["maps"]),
        tmp_path,
        use_ray=False,
    )
    assert len(drafts) == 1 and not drafts[0].accepted and drafts[0].reason.startswith("unusable domain list")
