"""Every task template of every shipped domain is solvable: the blueprint oracle passes its rubric
on 20 sampled worlds, while doing nothing fails it (so the rubric can tell)."""

from collections import Counter

import pytest

from agentfactory.records import Message, Trajectory
from agentfactory.synth.oracle import play_blueprint
from agentfactory.tools import Domain, domain_files, load_domain
from agentfactory.tools.checks import score_trajectory
from agentfactory.tools.scaffold import scaffold
from agentfactory.tools.tasks import instantiate, sample_tasks

DOMAINS = {f.stem: f for f in domain_files()}
WORLDS = range(20)


def assert_oracle_passes(domain: Domain) -> None:
    tasks = sample_tasks(domain, WORLDS)
    per_template = Counter(t.meta["template"] for t in tasks)
    for template in domain.tasks:  # a template may skip a world that lacks what it needs, but not most
        assert per_template[template.id] >= 15, (template.id, per_template)
    failures = []
    for task in tasks:
        traj, runtime = play_blueprint(task, domain)
        score, results, _ = score_trajectory(task.rubric, traj, runtime.state)
        if score < 1.0:
            failures.append((task.id, [r.detail for r in results if not r.passed]))
        if task.kind not in ("refusal", "impossible"):  # a gold solution's calls all succeed
            failed = [(c.tool, c.result.error) for c in runtime.history if not c.result.ok]
            if failed:
                failures.append((task.id, failed))
    assert not failures, failures[:5]


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_blueprint_oracle_passes_every_template_on_20_worlds(name):
    assert_oracle_passes(load_domain(DOMAINS[name]))


def test_scaffold_is_valid_and_solvable(tmp_path):
    path = tmp_path / "pet_clinic.yaml"
    path.write_text(scaffold("pet_clinic", "healthcare-scheduling"))
    domain = load_domain(path)
    assert {t.kind for t in domain.tasks} == {
        "single_call",
        "multi_step",
        "clarification",
        "refusal",
        "impossible",
    }
    assert_oracle_passes(domain)
    with pytest.raises(ValueError, match="unknown category"):
        scaffold("x_y", "astrology")
    with pytest.raises(ValueError, match="lowercase"):
        scaffold("Bad Name", "travel")


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_doing_nothing_fails_the_rubrics_that_expect_action(name):
    domain = load_domain(DOMAINS[name])
    for task in sample_tasks(domain, range(3)):
        if not any(c.kind in ("final_state", "must_call") for c in task.rubric.programmatic):
            continue
        idle = Trajectory(task_id=task.id, messages=[Message(role="assistant", content="I cannot help.")])
        score, _, _ = score_trajectory(task.rubric, idle, task.initial_state)
        changes_state = any(
            c.kind == "must_call" or (c.kind == "final_state" and c.path and c.equals is not None)
            for c in task.rubric.programmatic
        )
        if changes_state and task.kind != "refusal":
            assert score < 1.0, task.id


def test_tasks_are_reproducible_and_vary_across_worlds():
    domain = load_domain(DOMAINS["retail_orders"])
    template = domain.tasks[0]
    a, b = instantiate(domain, template, 5), instantiate(domain, template, 5)
    assert a == b
    goals = {instantiate(domain, template, s).user_goal for s in range(10)}
    assert len(goals) >= 8
