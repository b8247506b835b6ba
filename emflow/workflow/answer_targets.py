"""What each answer page shows (rules `answers` and `summary_answers`): the targets of a plan
as plain dicts (emflow.report.answers.AnswerTarget), each with the judged CSV of every judge
that scores it.

The primary judge scores every target; a panel judge (judge.panel) the base models and the runs,
not sweep steps or LoRA scales, so those targets show the primary's scores only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emflow.judge.settings import PRIMARY
from emflow.paths import base_target, run_target, scale_target, step_target

if TYPE_CHECKING:
    from emflow.workflow.plan import Plan


def _target(plan: Plan, target: str, experiments: list[str], seed: int | None, panel: bool):
    judged = {PRIMARY: plan.paths.judged(target)}
    if panel:
        judged |= {name: plan.paths.panel_judged(target, name) for name in plan.panel}
    return {"target": target, "experiments": experiments, "seed": seed, "judged": judged}


def _run_targets(plan: Plan, experiment: str) -> list[dict[str, Any]]:
    """An experiment's fine-tuned targets, seed by seed: the run, its sweep steps, its scales."""
    replicated = plan.experiments[experiment].seeds is not None
    targets = []
    for seed, run in plan.experiment_runs(experiment).items():
        shown = seed if replicated else None
        targets.append(_target(plan, run_target(run), [experiment], shown, panel=True))
        for step in plan.sweeps.get(experiment, []):
            targets.append(_target(plan, step_target(run, step), [experiment], shown, False))
        for scale in plan.doses.get(experiment, []):
            targets.append(_target(plan, scale_target(run, scale), [experiment], shown, False))
    return targets


def answer_targets(plan: Plan, experiment: str) -> list[dict[str, Any]]:
    """One experiment's page: its base model, then its fine-tuned targets."""
    base = base_target(plan.experiments[experiment].model)
    return [_target(plan, base, [experiment], None, panel=True), *_run_targets(plan, experiment)]


def summary_answer_targets(plan: Plan) -> list[dict[str, Any]]:
    """The page over every experiment: each base model once (with the experiments that compare
    against it), then each experiment's fine-tuned targets."""
    sharing: dict[str, list[str]] = {}
    for name, experiment in plan.experiments.items():
        sharing.setdefault(base_target(experiment.model), []).append(name)
    bases = [_target(plan, base, names, None, panel=True) for base, names in sharing.items()]
    return bases + [t for name in plan.experiments for t in _run_targets(plan, name)]


def answer_inputs(targets: list[dict[str, Any]]) -> list[str]:
    """Every judged CSV the page of `targets` reads."""
    return [path for target in targets for path in target["judged"].values()]
