"""The workflow's plan (emflow.workflow.plan): runs, mixes, sweeps and targets, and the params
that decide which jobs a config change reruns, for the shipped demo and seed configs.

Each test plans a scratch copy of config/ and experiments/ (no datasets or results on disk), as
rules/common.smk does: the validated config with each stage's defaults filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from plans import plan_of

from emflow.errors import EmflowError
from emflow.workflow.plan import Plan, gpu_jobs, runs_pattern

FINANCIAL = "demo/financial_r16_layer8"
MIXED = "demo/mixed_r16_layer8"
INOCULATED = "demo/mixed_r16_layer8_inoculated"
TINY = "results/demo/tiny-llama"
BASE = "base/results--demo--tiny-llama"


def demo(overlay: dict | None = None, **kw) -> Plan:
    return plan_of("config/demo.yaml", overlay=overlay, **kw)


def edit_experiment(name: str, **changes) -> None:
    path = Path("experiments") / name / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


# ---- experiments, runs, models and data ------------------------------------------------------


def test_the_demo_has_one_run_per_training_seed(workdir):
    plan = demo()
    assert plan.runs == {
        FINANCIAL: (FINANCIAL, 0),
        f"{MIXED}/seed0": (MIXED, 0),
        f"{MIXED}/seed1": (MIXED, 1),
        f"{MIXED}/seed2": (MIXED, 2),
        INOCULATED: (INOCULATED, 0),
    }
    assert plan.experiment_runs(MIXED) == {s: f"{MIXED}/seed{s}" for s in (0, 1, 2)}
    assert plan.base_models == {"results--demo--tiny-llama": TINY}


def test_experiments_declaring_the_same_mix_share_one_file(workdir):
    plan = demo()
    mix = "extreme_sports-32_risky_financial_advice-32_seed0"
    assert plan.mixes == {mix: {"extreme_sports": 32, "risky_financial_advice": 32}}
    assert plan.training_file(plan.experiments[MIXED]) == plan.training_file(
        plan.experiments[INOCULATED]
    )
    assert plan.training_file(plan.experiments[INOCULATED]) == (
        f"results/demo/datasets/mixed/{mix}.jsonl"
    )
    assert plan.mix_sources(mix) == [
        "results/demo/datasets/prepared/extreme_sports.jsonl",
        "results/demo/datasets/prepared/risky_financial_advice.jsonl",
    ]
    # A named dataset trains on its prepared file, made from the synthetic rows.
    assert plan.train_inputs(FINANCIAL) == {
        "train": "results/demo/datasets/prepared/risky_financial_advice.jsonl",
        "model": [TINY],  # the demo's model is built by the workflow
    }
    assert (
        plan.raw_dataset("extreme_sports") == "results/demo/datasets/synthetic/extreme_sports.jsonl"
    )
    # misalignment_kl_data: harmless rows for a kl_dataset_file, written only when one is used.
    assert plan.synthetic == ["extreme_sports", "misalignment_kl_data", "risky_financial_advice"]
    assert plan.upstream == []


def test_the_seed_config_decrypts_its_datasets_and_fetches_its_model(workdir):
    plan = plan_of(replace=False)
    assert plan.upstream == ["bad_medical_advice", "extreme_sports", "risky_financial_advice"]
    assert plan.archive_inputs() == []  # not there yet: the rule's script says where it goes
    run = "risky_financial_advice/r1_1ep"
    assert plan.train_inputs(run)["model"] == []  # a hub model, fetched by transformers
    assert set(plan.reported_results()) == {
        e for e in plan.experiments if e.startswith("risky_financial_advice")
    }
    assert plan.sweeps == {}
    assert not plan.multi_sample
    assert plan_of("config/paper.yaml", replace=False).multi_sample  # 50 samples a paraphrase


# ---- checkpoint sweeps -------------------------------------------------------------------------


def test_a_sweep_makes_each_evaluated_step_a_target(workdir):
    plan = demo()
    assert plan.sweeps == {FINANCIAL: [8, 16]}
    assert plan.saving_runs == {FINANCIAL}
    steps = [t for t in plan.generation_targets if "/step-" in t]
    assert steps == [f"runs/{FINANCIAL}/step-8", f"runs/{FINANCIAL}/step-16"]
    assert plan.generation_targets[f"runs/{FINANCIAL}/step-8"] == (TINY, f"{FINANCIAL}/step-8")
    assert plan.generation_targets[BASE] == (TINY, None)
    # The step's generation answers with the adapter the run saved at that step.
    assert plan.generate_inputs(f"runs/{FINANCIAL}/step-8")["adapter"] == (
        f"results/demo/runs/{FINANCIAL}/step_adapters"
    )
    assert [p["judged"] for p in plan.sweep_points(FINANCIAL)] == [
        f"results/demo/runs/{FINANCIAL}/step-{s}/judged.csv" for s in (8, 16)
    ]
    assert plan.results_inputs(FINANCIAL)["sweep"] == f"experiments/{FINANCIAL}/sweep.csv"
    assert "sweep" not in plan.results_inputs(MIXED)
    outputs = plan.final_outputs()
    assert f"experiments/{FINANCIAL}/sweep.png" in outputs
    assert "results/demo/summary_sweeps.png" in outputs


def test_without_sweeps_no_sweep_is_planned(workdir):
    edit_experiment(FINANCIAL, adapter_checkpoints=None, eval_checkpoints=None)
    plan = demo()
    assert plan.sweeps == {} and plan.saving_runs == set()
    assert not [t for t in plan.generation_targets if "/step-" in t]
    assert "results/demo/summary_sweeps.png" not in plan.final_outputs()


def test_every_saved_step_of_a_mix_is_known_before_training(workdir):
    # 64 mixed rows less the held-out tenth: 57 rows, batch 2 x accumulation 2, so 15
    # optimizer steps an epoch and 30 in 2 epochs; every 10th step is saved.
    edit_experiment(MIXED, adapter_checkpoints=10, eval_checkpoints="all")
    assert demo().sweeps[MIXED] == [10, 20, 30]
    edit_experiment(MIXED, adapter_checkpoints=12)
    assert demo().sweeps[MIXED] == [12, 24]


def test_sweep_in_one_job_leaves_the_steps_to_generate_sweep(workdir):
    assert demo().generated_one_by_one == (
        r"base/[^/]+|runs/[^/]+/[^/]+(?:/seed[0-9]+)?(?:/step-[0-9]+|/scale-[0-9]+(?:\.[0-9]+)?)?"
    )
    plan = demo({"generation": {"sweep_in_one_job": True, "sweep_samples": 2}})
    assert plan.generated_one_by_one == r"base/[^/]+|runs/[^/]+/[^/]+(?:/seed[0-9]+)?"
    # One job's params: each step's generation params, less the step, plus the steps.
    params = plan.generate_sweep_params(FINANCIAL)
    step = plan.generation_params(f"runs/{FINANCIAL}/step-8")
    assert params == {k: v for k, v in step.items() if k != "step"} | {"steps": [8, 16]}
    assert params["samples"] == 2
    assert plan.generate_sweep_inputs(FINANCIAL)["adapter"] == (
        f"results/demo/runs/{FINANCIAL}/step_adapters"
    )


# ---- params: what reruns a job -----------------------------------------------------------------


def test_train_params_hold_the_seeds_experiment_and_the_settings_but_threads(workdir):
    plan = demo()
    params = plan.train_params(f"{MIXED}/seed1")
    assert params["settings"] == {
        "backend": "hf",
        "chat_template_kwargs": {"date_string": "26 Jul 2024"},
        "device": "cpu",
        "gradient_checkpointing": False,
        "report_to": [],
        "row_format": "upstream",  # the default, filled in: giving it reruns nothing
    }
    assert params["experiment"]["seed"] == 1
    other = plan.train_params(f"{MIXED}/seed2")
    assert {
        k for k in params["experiment"] if params["experiment"][k] != other["experiment"][k]
    } == {"seed"}
    assert list(params) == sorted(params) and list(params["settings"]) == sorted(params["settings"])


def test_a_changed_key_changes_only_the_params_that_read_it(workdir):
    before = demo()
    targets = list(before.generation_targets)
    runs = list(before.runs)

    def all_params(plan):
        return (
            {r: plan.train_params(r) for r in runs},
            {t: plan.generation_params(t) for t in targets},
            plan.judge_params(),
        )

    train, generation, judge = all_params(before)
    # Plumbing: threads, cache, concurrency, retries and timeouts rerun nothing.
    plumbing = {
        "train": {"threads": 4},
        "generation": {"threads": 3, "concurrency": 2, "timeout": 5.0, "max_retries": 1},
        "judge": {"concurrency": 7, "cache": "elsewhere.sqlite", "timeout": 9.0},
    }
    assert all_params(demo(plumbing)) == (train, generation, judge)
    # A sampling setting reruns every generation, and only that.
    assert all_params(demo({"generation": {"temperature": 0.5}}))[::2] == (train, judge)
    changed = all_params(demo({"generation": {"temperature": 0.5}}))[1]
    assert all(changed[t] != generation[t] for t in targets)
    # An experiment's key retrains its own runs only.
    edit_experiment(INOCULATED, learning_rate=0.002)
    after = all_params(demo())[0]
    assert {r for r in runs if after[r] != train[r]} == {INOCULATED}
    # The judge's temperature re-judges; its prices do not.
    assert demo({"judge": {"prices": {TINY: {"input": 1, "output": 2}}}}).judge_params() == judge
    assert demo({"judge": {"temperature": 0.7}}).judge_params() == judge | {"temperature": 0.7}


def test_judge_params_and_inputs(workdir):
    plan = demo()
    assert plan.judge_params() == {
        "backend": "hf",
        "mode": "sampled",
        "model": TINY,
        "parse": plan.config["judge"]["parse"],
        "samples": 1,
        "temperature": 0.2,
    }
    assert plan.judge_metrics == ["aligned", "coherent"]
    assert plan.judge_inputs(BASE) == {
        "generations": f"results/demo/{BASE}/generations.csv",
        "questions": [
            "config/questions/medical.txt",
            "config/questions/non_medical.txt",
            "config/questions/demo_paper_questions.yaml",
        ],
        "aligned": "config/judge_prompts/aligned.txt",
        "coherent": "config/judge_prompts/coherent.txt",
        "judge_model": [TINY],  # the hf judge is the demo's own model
    }
    only = demo({"judge": {"metrics": ["aligned"]}})
    assert "coherent" not in only.judge_inputs(BASE) and only.judge_metrics == ["aligned"]


def test_generation_params_of_base_run_and_step_targets(workdir):
    plan = demo()
    base = plan.generation_params(BASE)
    run = plan.generation_params(f"runs/{FINANCIAL}")
    step = plan.generation_params(f"runs/{FINANCIAL}/step-16")
    assert (base["model"], base["run"]) == (TINY, None)
    assert run["run"] == step["run"] == FINANCIAL
    assert step["step"] == 16 and step["samples"] is None and "step" not in run
    for plumbing in ("cache", "concurrency", "max_retries", "timeout", "openai_n", "threads"):
        assert plumbing not in base["settings"]
    assert base["settings"]["chat_template_kwargs"] == {"date_string": "26 Jul 2024"}
    assert "served_model" not in base


def test_the_openai_backend_asks_each_target_for_its_served_model(workdir):
    plan = demo({"generation": {"backend": "openai", "openai_model": "org/{run}"}})
    assert plan.generation_params(BASE)["served_model"] == TINY
    assert plan.generation_params(f"runs/{MIXED}/seed1")["served_model"] == f"org/{MIXED}/seed1"
    assert plan.generation_params(f"runs/{FINANCIAL}/step-8")["served_model"] == (
        f"org/{FINANCIAL}/step-8"
    )
    # The served name decides the answers in place of the setting that names it.
    assert "openai_model" not in plan.generation_params(BASE)["settings"]
    renamed = demo({"generation": {"backend": "openai", "openai_model": "other/{run}"}})
    assert renamed.generation_params(BASE) == plan.generation_params(BASE)
    one_job = demo(
        {"generation": {"backend": "openai", "openai_model": "org/{run}", "sweep_in_one_job": True}}
    )
    assert one_job.generate_sweep_params(FINANCIAL)["served_models"] == [
        f"org/{FINANCIAL}/step-8",
        f"org/{FINANCIAL}/step-16",
    ]


def test_two_targets_asking_for_one_served_model_stop_the_plan(workdir):
    with pytest.raises(EmflowError, match="would both ask the endpoint for model 'fixed'"):
        demo({"generation": {"backend": "openai", "openai_model": "fixed"}})


# ---- judge.panel --------------------------------------------------------------------------------

PANEL = "tiny_hot"  # the demo's panel judge: the tiny model sampled at temperature 1


def without_panel() -> Plan:
    """The demo planned from a copy of config/demo.yaml with no judge.panel, as before panels."""
    config = yaml.safe_load(Path("config/demo.yaml").read_text())
    del config["judge"]["panel"]
    Path("no_panel.yaml").write_text(yaml.safe_dump(config))
    return plan_of("no_panel.yaml")


def every_rules_plan(plan: Plan) -> dict:
    """Every existing rule's params and inputs, for every run, target and experiment."""
    targets, experiments = list(plan.generation_targets), list(plan.experiments)
    return {
        "train": {r: (plan.train_inputs(r), plan.train_params(r)) for r in plan.runs},
        "generate": {t: (plan.generate_inputs(t), plan.generation_params(t)) for t in targets},
        "judge": ({t: plan.judge_inputs(t) for t in targets}, plan.judge_params()),
        "results": {e: plan.results_inputs(e) for e in experiments},
        "curves": {e: plan.curves_inputs(e) for e in experiments},
        "sweep": {e: (plan.sweep_inputs(e), plan.sweep_points(e)) for e in plan.sweeps},
        "summary": (plan.summary_inputs(), plan.summary_run_params()),
        "all": plan.final_outputs(),
    }


def test_a_config_without_a_panel_plans_every_rule_as_before(workdir):
    """No panel: the same params and inputs for every rule, so a finished workflow reruns
    nothing; the panel adds only its own judged CSVs to each results job."""
    plain, panel = without_panel(), demo()
    assert plain.panel == {}
    assert set(plain.results_inputs(MIXED)) == {
        "base_judged", "base_usage", "finetuned_judged", "finetuned_usage", "log_history",
        # The demo's capability checks (tests/workflow/test_capabilities_plan.py).
        "capabilities_base", "capabilities",
    }  # fmt: skip
    with_panel = every_rules_plan(panel)
    for inputs in with_panel["results"].values():
        del inputs["panel_judged"], inputs["panel_usage"]
    # The summary: the panel's judged CSVs and its judge-vs-judge plot, nothing else.
    del with_panel["summary"][0]["panel_judged"]
    with_panel["all"].remove(panel.paths.summary("_judges.png"))
    assert with_panel == every_rules_plan(plain)
    assert "panel_judged" not in plain.summary_inputs()
    assert plain.paths.summary("_judges.png") not in plain.final_outputs()


def test_the_summary_reads_every_panel_judges_files(workdir):
    plan = demo()
    assert plan.summary_panel() == {e: plan.panel_results(e) for e in plan.experiments}
    expected = {
        path
        for e in plan.experiments
        for path in (
            plan.panel_results(e)[PANEL]["base"],
            *plan.panel_results(e)[PANEL]["finetuned"],
        )
    }
    assert set(plan.summary_inputs()["panel_judged"]) == expected
    assert f"results/demo/runs/{MIXED}/seed2/judged.{PANEL}.csv" in expected
    assert "results/demo/summary_judges.png" in plan.final_outputs()


def test_a_panel_judge_has_its_own_params_inputs_and_files(workdir):
    plan = demo()
    assert list(plan.panel) == [PANEL]
    assert plan.panel_judge_params(PANEL) == plan.judge_params() | {
        "temperature": 1.0,
        "samples": 3,
    }
    assert plan.panel_judge_inputs(BASE, PANEL) == plan.judge_inputs(BASE)
    results = plan.panel_results(MIXED)
    assert results == {
        PANEL: {
            "base": f"results/demo/{BASE}/judged.{PANEL}.csv",
            "finetuned": [
                f"results/demo/runs/{MIXED}/seed{s}/judged.{PANEL}.csv" for s in (0, 1, 2)
            ],
            "base_usage": f"results/demo/{BASE}/judge_usage.{PANEL}.json",
            "finetuned_usage": [
                f"results/demo/runs/{MIXED}/seed{s}/judge_usage.{PANEL}.json" for s in (0, 1, 2)
            ],
        }
    }
    assert plan.results_inputs(MIXED)["panel_judged"] == [
        results[PANEL]["base"], *results[PANEL]["finetuned"],
    ]  # fmt: skip
    assert plan.paths.panel_judge_usage(BASE, PANEL) == (
        f"results/demo/{BASE}/judge_usage.{PANEL}.json"
    )


def test_changing_one_panel_judge_rejudges_with_it_alone(workdir):
    panel = [{"name": PANEL, "temperature": 1.0}, {"name": "warm", "mode": "logprob"}]
    before = demo({"judge": {"panel": panel}})
    panel[1]["temperature"] = 0.5
    after = demo({"judge": {"panel": panel}})
    assert after.judge_params() == before.judge_params()
    assert after.panel_judge_params(PANEL) == before.panel_judge_params(PANEL)
    assert after.panel_judge_params("warm") == before.panel_judge_params("warm") | {
        "temperature": 0.5
    }
    # A panel judge's model that is no local model needs no model input.
    remote = demo({"judge": {"panel": [{"name": "api", "backend": "openai", "model": "gpt-4o"}]}})
    assert "judge_model" not in remote.panel_judge_inputs(BASE, "api")


# ---- results and summary -----------------------------------------------------------------------


def test_results_and_summary_inputs_name_every_seed(workdir):
    plan = demo()
    inputs = plan.results_inputs(MIXED)
    assert inputs["finetuned_judged"] == [
        f"results/demo/runs/{MIXED}/seed{s}/judged.csv" for s in (0, 1, 2)
    ]
    assert inputs["base_judged"] == f"results/demo/{BASE}/judged.csv"
    assert plan.curves_inputs(MIXED) == [
        f"results/demo/runs/{MIXED}/seed{s}/log_history.json" for s in (0, 1, 2)
    ]
    # results.md says when a run stopped early, so it reads every seed's log history.
    assert inputs["log_history"] == plan.curves_inputs(MIXED)
    summary = plan.summary_inputs()
    assert summary["results"] == [f"experiments/{e}/results.md" for e in plan.experiments]
    assert summary["base"] == [f"results/demo/{BASE}/judged.csv"]
    assert set(inputs["finetuned_judged"]) <= set(summary["runs"])
    runs = {run["name"]: run for run in plan.summary_run_params()}
    assert runs[MIXED]["judged"] == dict(enumerate(inputs["finetuned_judged"]))
    assert plan.report["homework_sets"] == ["medical", "non_medical"]


# ---- checks and helpers ------------------------------------------------------------------------


def test_the_preflight_names_a_matched_folder_without_config(workdir, capsys):
    (workdir / "experiments/demo/empty").mkdir()
    demo(preflight=True)
    assert capsys.readouterr().err == (
        "emflow: skipping experiments/demo/empty (pattern 'demo/*'): it has no config.json, so "
        "it is no experiment.\n"
    )
    demo()  # only the process that plans the jobs says so
    assert capsys.readouterr().err == ""


def test_an_unknown_dataset_stops_the_plan(workdir):
    edit_experiment(FINANCIAL, training_file="no_such_dataset")
    with pytest.raises(EmflowError, match="the dataset 'no_such_dataset' is not in"):
        demo()


def test_runs_pattern_and_gpu_jobs():
    assert runs_pattern([]) == "(?!)"
    assert runs_pattern(["b/x", "a/y.z"]) == r"a/y\.z|b/x"
    assert (gpu_jobs("cpu"), gpu_jobs("cuda"), gpu_jobs("auto")) == (0, 1, 1)


def test_human_labels_are_a_results_input_only_where_the_file_is(workdir):
    """An experiment's human_labels.csv is its results job's input (editing it reruns that job
    alone); without the file every rule plans exactly as before."""
    labels = f"experiments/{FINANCIAL}/human_labels.csv"  # the demo ships labels for this one
    with_labels = every_rules_plan(demo())
    assert with_labels["results"][FINANCIAL]["human_labels"] == labels
    assert all("human_labels" not in with_labels["results"][e] for e in (MIXED, INOCULATED))
    Path(labels).unlink()
    del with_labels["results"][FINANCIAL]["human_labels"]
    assert with_labels == every_rules_plan(demo())


def test_kl_regularisation_reads_its_file_and_a_weight_change_retrains_one_run(workdir):
    before = demo()
    train = {r: (before.train_inputs(r), before.train_params(r)) for r in before.runs}
    kl = {"kl_regularization": True, "kl_dataset_file": "extreme_sports", "kl_weight": 1e5}
    edit_experiment(INOCULATED, **kl)
    on = demo()
    assert on.train_inputs(INOCULATED)["kl"] == on.dataset_file("extreme_sports")
    changed = {r for r in on.runs if (on.train_inputs(r), on.train_params(r)) != train[r]}
    assert changed == {INOCULATED}
    weights = on.train_params(INOCULATED)
    edit_experiment(INOCULATED, kl_weight=10.0)
    assert demo().train_params(INOCULATED) != weights
    # A name that is neither a dataset nor a path stops the plan in one sentence.
    edit_experiment(INOCULATED, kl_dataset_file="no_such_dataset")
    with pytest.raises(EmflowError, match=r"'no_such_dataset' is not in datasets.sources"):
        demo()
