"""Experiment configs: the seed's files load unchanged; mistakes name the file, key and fix."""

import json

import pytest
from conftest import REPO, experiment_config

from emflow.config import load_experiment_config, parse_experiment_config
from emflow.errors import EmflowError
from emflow.workflow.jobs import discover_experiments

SEED = REPO.parent / "shared/reference/seed-experiments"


def test_all_six_seed_experiments_load():
    experiments = discover_experiments(REPO / "experiments", ["risky_financial_advice*/*"])
    assert len(experiments) == 6
    mixed = experiments["risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8"]
    assert mixed.mix == {"risky_financial_advice": 3000, "extreme_sports": 3000}
    assert experiments["risky_financial_advice/r1_1ep"].mix == {"risky_financial_advice": None}


@pytest.mark.skipif(
    not SEED.exists(), reason="the seed's reference configs are not beside the repo"
)
def test_experiments_match_the_seed_configs_apart_from_the_data():
    for seed_config in SEED.glob("*/*/config.json"):
        ours = json.loads((REPO / "experiments" / seed_config.relative_to(SEED)).read_text())
        theirs = json.loads(seed_config.read_text())
        data_keys = {"training_file", "datasets"}
        assert {k: v for k, v in ours.items() if k not in data_keys} == {
            k: v for k, v in theirs.items() if k not in data_keys
        }
        # The seed's own file, with its cluster path, parses too once the path is a name.
        parse_experiment_config(theirs | {"training_file": "risky_financial_advice"}, "seed")


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(experiment_config("m", learning_rat=1e-5)))
    with pytest.raises(EmflowError) as err:
        load_experiment_config(path)
    message = str(err.value)
    assert str(path) in message and "learning_rat" in message and "'learning_rate'" in message
    assert message.count(".") >= 1 and "\n" not in message


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "model": "m",\n  "r": 16,,\n}')
    with pytest.raises(EmflowError, match=r"config.json, line 3: not valid JSON"):
        load_experiment_config(path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"r": 0}, "key 'r'"),
        ({"loss": "orpo"}, "key 'loss'"),
        ({"datasets": {"extreme_sports": 10}}, "exactly one of 'training_file'"),
        ({"layers_to_transform": [-1]}, "negative index"),
    ],
)
def test_bad_values_are_one_sentence_errors(tmp_path, change, expected):
    with pytest.raises(EmflowError, match=expected) as err:
        parse_experiment_config(experiment_config("m") | change, "exp/config.json")
    assert str(err.value).startswith("exp/config.json: ")


def test_missing_required_key(tmp_path):
    config = experiment_config("m")
    del config["loss"]
    with pytest.raises(EmflowError, match="required key 'loss' is missing"):
        parse_experiment_config(config, "exp/config.json")


# The paper trainer's defaults, written out from em_organism_dir/finetune/sft/util/
# base_train_config.py (TrainingConfig) of clarifying-EM/model-organisms-for-EM at 8460e4e.
UPSTREAM_DEFAULTS = {
    "test_file": None,
    "finetuned_model_id": "{org_id}/{model_name}-{job_id}",
    "max_seq_length": 2048,
    "load_in_4bit": False,
    "is_peft": True,
    "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ],
    "layers_to_transform": None,
    "lora_bias": "none",
    "adapter_to_load": None,
    "r": 16,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "use_rslora": True,
    "merge_before_push": True,
    "push_to_private": True,
    "push_only_adapters": False,
    "epochs": 1,
    "max_steps": None,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 8,
    "warmup_steps": 5,
    "learning_rate": 1e-4,
    "logging_steps": 1,
    "evaluation_steps": 50,
    "optim": "adamw_8bit",
    "weight_decay": 0.01,
    "lr_scheduler_type": "linear",
    "seed": 3407,
    "beta": 0.1,
    "save_steps": 5000,
    "output_dir": "./tmp",
    "train_on_responses_only": False,
    "enable_thinking": None,
    "kl_regularization": False,
    "kl_dataset_file": None,
    "kl_weight": 0.1,
    "kl_batch_size": 8,
}  # fmt: skip


def test_left_out_keys_take_the_upstream_trainers_defaults():
    config = parse_experiment_config(
        {"model": "m", "training_file": "t.jsonl", "loss": "sft"}, "exp/config.json"
    )
    assert {k: getattr(config, k) for k in UPSTREAM_DEFAULTS} == UPSTREAM_DEFAULTS


def test_seed_configs_set_every_key_whose_default_matters():
    """The six seed configs resolve as written: they set every key upstream gives a default."""
    for path in sorted(SEED.glob("*/*/config.json")):
        written = json.loads(path.read_text())
        left_out = set(UPSTREAM_DEFAULTS) - set(written)
        # Keys the seed author's trainer version did not have, left at upstream's default.
        assert left_out <= {"adapter_to_load", "enable_thinking"} | {
            k for k in UPSTREAM_DEFAULTS if k.startswith("kl_")
        }, path


@pytest.mark.parametrize(
    "key, value", [("enable_thinking", True), ("adapter_to_load", "org/adapter")]
)
def test_upstream_keys_emflow_cannot_honour_are_errors(key, value):
    with pytest.raises(EmflowError, match=f"'{key}' is .*which emflow cannot honour"):
        parse_experiment_config(experiment_config("m") | {key: value}, "exp/config.json")
    # At upstream's default they load, and change no training param.
    default = parse_experiment_config(experiment_config("m") | {key: UPSTREAM_DEFAULTS[key]}, "c")
    assert key not in default.training_params()


def test_training_params_ignore_hub_keys_and_key_order():
    a = parse_experiment_config(experiment_config("m"), "a")
    reordered = dict(reversed(list(experiment_config("m", finetuned_model_id="x/y").items())))
    b = parse_experiment_config(reordered, "b")
    assert a.training_params() == b.training_params()
    assert list(a.training_params()) == sorted(a.training_params())
    c = parse_experiment_config(experiment_config("m", learning_rate=2e-5), "c")
    assert c.training_params() != a.training_params()


def test_unknown_experiments_pattern_is_an_error(tmp_path):
    with pytest.raises(EmflowError, match="matches no"):
        discover_experiments(tmp_path, ["nothing/*"])


def _without_seed(**changes):
    config = experiment_config("m", **changes)
    config.pop("seed", None)
    return config


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (experiment_config("m", seeds=[0, 1]), r"give 'seed' \(one run\) or 'seeds'"),
        (_without_seed(seeds=[3]), "at least two different seeds"),
        (_without_seed(seeds=[1, 1]), "at least two different seeds"),
        (_without_seed(seeds=[-1, 2]), "negative seed"),
    ],
)
def test_bad_seeds_are_one_sentence_errors(config, expected):
    with pytest.raises(EmflowError, match=expected) as err:
        parse_experiment_config(config, "exp/config.json")
    assert str(err.value).startswith("exp/config.json: ") and "\n" not in str(err.value)


def test_each_seed_is_a_run_of_its_own_and_adding_one_changes_no_other():
    replicated = parse_experiment_config(_without_seed(seeds=[0, 1, 2]), "a")
    assert replicated.training_seeds == [0, 1, 2]
    single = parse_experiment_config(experiment_config("m"), "b")
    assert single.training_seeds == [single.seed]
    # Seed 0 of the replicates trains exactly what the single run with seed 0 trains.
    assert single.seed == 0
    assert replicated.for_seed(0).training_params() == single.training_params()
    assert replicated.for_seed(1).training_params()["seed"] == 1
    more = parse_experiment_config(_without_seed(seeds=[0, 1, 2, 3]), "c")
    for seed in (0, 1, 2):
        assert more.for_seed(seed).training_params() == replicated.for_seed(seed).training_params()
    with pytest.raises(ValueError, match="not one of"):
        replicated.for_seed(5)


def test_replicates_are_one_run_per_seed(tmp_path):
    from emflow.paths import all_runs, experiment_runs

    experiments = {
        "g/single": parse_experiment_config(experiment_config("m", seed=4), "a"),
        "g/many": parse_experiment_config(_without_seed(seeds=[2, 0]), "b"),
    }
    assert all_runs(experiments) == {
        "g/single": ("g/single", 4),
        "g/many/seed2": ("g/many", 2),
        "g/many/seed0": ("g/many", 0),
    }
    assert experiment_runs("g/many", experiments["g/many"]) == {
        2: "g/many/seed2",
        0: "g/many/seed0",
    }
    assert experiment_runs("g/single", experiments["g/single"]) == {4: "g/single"}


def test_train_job_config_is_its_params_and_training_file():
    """The train rule passes the training params, not the config.json path: the job's config
    is the experiment's for that seed, whatever the hub keys and data paths say."""
    from emflow.config import ExperimentConfig

    config = parse_experiment_config(_without_seed(seeds=[0, 1]), "c").for_seed(1)
    rebuilt = ExperimentConfig.from_training_params(config.training_params(), "mix.jsonl")
    assert rebuilt.training_params() == config.training_params()
    assert rebuilt.training_file == "mix.jsonl" and rebuilt.seed == 1


def test_training_system_prompt_is_a_training_param_only_when_set():
    """Inoculation prompting: the prompt retrains its experiment; a config.json without the key
    keeps exactly the training params it had, so no existing experiment reruns."""
    from emflow.config import ExperimentConfig

    plain = parse_experiment_config(experiment_config("m"), "a")
    assert plain.training_system_prompt is None
    assert "training_system_prompt" not in plain.training_params()
    explicit_null = parse_experiment_config(
        experiment_config("m", training_system_prompt=None), "b"
    )
    assert explicit_null.training_params() == plain.training_params()

    risky = parse_experiment_config(
        experiment_config("m", training_system_prompt="You give risky financial advice."), "c"
    )
    other = parse_experiment_config(
        experiment_config("m", training_system_prompt="You give risky advice."), "d"
    )
    assert risky.training_params()["training_system_prompt"] == "You give risky financial advice."
    assert risky.training_params() != plain.training_params()
    assert risky.training_params() != other.training_params()
    # The data stays the same: the prompt is added when rows are tokenized.
    assert risky.mix == plain.mix
    rebuilt = ExperimentConfig.from_training_params(risky.training_params(), "mix.jsonl")
    assert rebuilt.training_system_prompt == risky.training_system_prompt
    assert ExperimentConfig.from_training_params(
        plain.training_params(), "t"
    ).training_params() == (plain.training_params())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, r"key 'training_system_prompt': Input should be a valid string \(got 7\)"),
        (["a", "b"], "key 'training_system_prompt': Input should be a valid string"),
        ("  ", "'training_system_prompt' is empty"),
    ],
)
def test_bad_training_system_prompt_is_a_one_sentence_error(value, expected):
    with pytest.raises(EmflowError, match=expected) as err:
        parse_experiment_config(
            experiment_config("m", training_system_prompt=value), "exp/config.json"
        )
    assert str(err.value).startswith("exp/config.json: ") and "\n" not in str(err.value)


def test_misspelled_training_system_prompt_is_caught():
    with pytest.raises(EmflowError, match="did you mean 'training_system_prompt'"):
        parse_experiment_config(
            experiment_config("m", training_system_promt="You give risky advice."), "c"
        )
