"""Configs: each experiment's config.json (the Model Organisms for EM training config, validated
strictly) and the workflow config.

One experiment is one `config.json` with the keys the user already writes for the upstream
trainer, so the seed's files run unchanged apart from where the data lives. Unknown or misspelled
keys are errors that name the key and the file.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from emflow.errors import EmflowError
from emflow.inoculation import Inoculation, check_inoculation

# Keys that only steer pushing to the Hugging Face Hub or the upstream trainer's scratch folder.
# emflow never pushes and chooses its own output folders, so these never change a trained
# adapter and are left out of the training stage's params (changing them reruns nothing).
NON_TRAINING_KEYS = frozenset(
    {
        "finetuned_model_id",
        "merge_before_push",
        "push_only_adapters",
        "push_to_private",
        "output_dir",
    }
)

# Which replicates to train: each seed in `seeds` is one run of its own; the training stage sees
# only that run's `seed`, so adding a seed never reruns the others.
REPLICATE_KEYS = frozenset({"seeds"})

# Keys that say where the data comes from: they reach the training job as its input files,
# not as params.
DATA_KEYS = frozenset({"training_file", "test_file", "datasets"})

# emflow's own keys added after experiments were already trained: left out of the training params
# while unset, so that a config.json without them keeps the params (and adapter) it had.
OMITTED_WHEN_UNSET_KEYS = frozenset(
    {
        "training_system_prompt",
        "inoculation",
        "adapter_checkpoints",
        "early_stopping_patience",
        "early_stopping_threshold",
    }
)

# Which saved adapter checkpoints to generate and judge: evaluation, not training, so changing
# them never retrains (emflow's own key).
EVALUATION_KEYS = frozenset({"eval_checkpoints", "eval_lora_scales", "compare_to"})

# Upstream keys for features emflow does not have: accepted at their upstream default (so an
# upstream config.json loads), an error otherwise, and never part of the training params.
UNSUPPORTED_KEYS = {
    "adapter_to_load": "emflow trains a new adapter from the base model",
    "enable_thinking": "emflow renders chat templates without it",
}

# KL-regularised training (the paper trainer's keys, emflow.train.kl): part of the training
# params only when `kl_regularization` is on, so a config without it keeps its params. The KL
# file is the train job's input (like training_file), never a param.
KL_KEYS = frozenset({"kl_regularization", "kl_weight", "kl_batch_size"})

# The paper trainer's defaults for the LoRA target (em_organism_dir/finetune/sft/util/
# base_train_config.py, TrainingConfig).
UPSTREAM_TARGET_MODULES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)  # fmt: skip


class ExperimentConfig(BaseModel):
    """One fine-tuning run, in the upstream trainer's vocabulary (plus `datasets` for mixes).

    A key a config.json leaves out takes the default of the paper trainer's `TrainingConfig`
    (em_organism_dir/finetune/sft/util/base_train_config.py of clarifying-EM/
    model-organisms-for-EM), and the keys it requires (`model`, the training data, `loss`) are
    required here. emflow's own keys: `datasets`, `test_size`, `seeds`, `training_system_prompt`,
    `inoculation`, `compare_to`, `adapter_checkpoints`, `eval_checkpoints`, `eval_lora_scales`,
    `early_stopping_patience`, `early_stopping_threshold`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    # A dataset name from the workflow config (e.g. "risky_financial_advice") or a JSONL path.
    training_file: str | None = None
    # A mix: dataset name -> rows to take (null: all), shuffled together with the mix seed.
    datasets: dict[str, int | None] | None = None
    test_file: str | None = None
    # Share of the training file held out for evaluation when no test_file is given (upstream: 10%).
    test_size: float = Field(default=0.1, ge=0.0, lt=1.0)
    finetuned_model_id: str | None = "{org_id}/{model_name}-{job_id}"
    max_seq_length: int = Field(default=2048, gt=0)
    load_in_4bit: bool = False
    loss: Literal["sft"]
    is_peft: Literal[True] = True
    target_modules: list[str] = Field(default=list(UPSTREAM_TARGET_MODULES), min_length=1)
    layers_to_transform: list[int] | None = None
    lora_bias: Literal["none", "all", "lora_only"] = "none"
    adapter_to_load: str | None = None
    r: int = Field(default=16, gt=0)
    lora_alpha: float = Field(default=16, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    use_rslora: bool = True
    merge_before_push: bool = True
    push_only_adapters: bool = False
    push_to_private: bool = True
    epochs: int = Field(default=1, gt=0)
    max_steps: int | None = None
    per_device_train_batch_size: int = Field(default=2, gt=0)
    gradient_accumulation_steps: int = Field(default=8, gt=0)
    warmup_steps: int = Field(default=5, ge=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    logging_steps: int = Field(default=1, gt=0)
    evaluation_steps: int | None = Field(default=50, gt=0)
    optim: str = "adamw_8bit"
    weight_decay: float = Field(default=0.01, ge=0.0)
    lr_scheduler_type: str = "linear"
    seed: int = Field(default=3407, ge=0)
    # Replicates: one run per training seed (emflow's own key). Each run uses its seed wherever
    # `seed` would steer training: LoRA initialisation, the held-out split and the row order.
    seeds: list[int] | None = None
    # Used by preference losses upstream (DPO/ORPO); accepted so the seed's files load, unused
    # by sft.
    beta: float | None = 0.1
    save_steps: int = Field(default=5000, gt=0)
    output_dir: str | None = "./tmp"
    train_on_responses_only: bool = False
    # Inoculation prompting (Tan et al. 2025, Wichers et al. 2025; emflow's own key): a system
    # message with this text starts every training and held-out row, added when rows are
    # tokenized (the dataset files stay as they are) and never carrying loss. Generation and
    # judging run without it. A row that already has a system message is an error.
    training_system_prompt: str | None = None
    # The general form (emflow.inoculation.Inoculation): paraphrases, a user-turn placement, loss.
    # `training_system_prompt: "X"` trains exactly as `inoculation: {"prompt": "X"}`.
    inoculation: Inoculation | None = None
    # The experiment of the same group (its folder name) the summary compares this one with
    # (emflow's own key, a report key: it never retrains). In a group where some experiment has
    # it, the summary's differences are exactly these pairs (the reference as A); without it,
    # every pair of the group's experiments, as before.
    compare_to: str | None = Field(default=None, pattern=r"^[^/\s]+$")
    # Checkpoint sweeps (emflow's own keys). `adapter_checkpoints`: save the LoRA adapter after
    # these optimizer steps, as PEFT folders (N: every N steps; or a list of steps); a training
    # key. `eval_checkpoints`: which saved steps to generate and judge ("all", or a list): an
    # evaluation key, so evaluating more or fewer saved steps never retrains.
    adapter_checkpoints: int | list[int] | None = None
    eval_checkpoints: Literal["all"] | list[int] | None = None
    # Adapter dose-response (emflow's own key; Model Organisms' load_lora_with_B_multiplied):
    # each scale multiplies every LoRA B matrix of the run's final adapter at load time and is
    # generated and judged as a target of its own, `runs/<run>/scale-<s>`; never retrains.
    eval_lora_scales: list[float] | None = None
    # Stopping on the held-out loss (emflow's own keys, transformers' EarlyStoppingCallback
    # names and rule; emflow.train.early_stop): stop after `early_stopping_patience` evaluations
    # (every `evaluation_steps`) without an improvement of more than `early_stopping_threshold`.
    # The paper's own early stop (training loss below 0.01 for six logs) is always on.
    early_stopping_patience: int | None = Field(default=None, gt=0)
    early_stopping_threshold: float | None = Field(default=None, ge=0.0)
    enable_thinking: bool | None = None
    # KL-regularised training (upstream's keys; emflow.train.kl): `kl_dataset_file` is a dataset
    # name from the workflow config or a JSONL path, like training_file.
    kl_regularization: bool = False
    kl_dataset_file: str | None = None
    kl_weight: float = 0.1
    kl_batch_size: int = Field(default=8, gt=0)

    @model_validator(mode="after")
    def _one_data_source(self) -> ExperimentConfig:
        if (self.training_file is None) == (self.datasets is None):
            raise ValueError(
                "give exactly one of 'training_file' (a dataset name or JSONL path) and "
                "'datasets' (a mix such as "
                '{"risky_financial_advice": 3000, "extreme_sports": 3000})'
            )
        if self.datasets is not None and not self.datasets:
            raise ValueError("'datasets' is empty; name at least one dataset")
        if self.seeds is not None:
            if "seed" in self.model_fields_set:
                raise ValueError(
                    "give 'seed' (one run) or 'seeds' (one run per seed), not both; remove 'seed'"
                )
            if len(set(self.seeds)) < 2 or len(set(self.seeds)) != len(self.seeds):
                raise ValueError(
                    "'seeds' must list at least two different seeds, each once "
                    f"(got {self.seeds}); for a single run use 'seed'"
                )
            if any(s < 0 for s in self.seeds):
                raise ValueError(
                    f"'seeds' holds a negative seed (got {self.seeds}); use seeds >= 0"
                )
        for key, why in UNSUPPORTED_KEYS.items():
            if getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(
                    f"'{key}' is {getattr(self, key)!r}, which emflow cannot honour ({why}); "
                    f"remove the key or set it to {type(self).model_fields[key].default!r}"
                )
        if self.training_system_prompt is not None and not self.training_system_prompt.strip():
            raise ValueError(
                "'training_system_prompt' is empty; give the system prompt's text, or remove the "
                "key (or set it to null) to train without one"
            )
        check_inoculation(
            self.inoculation,
            training_system_prompt=self.training_system_prompt,
            train_on_responses_only=self.train_on_responses_only,
        )
        self._check_checkpoints()
        self._check_early_stopping()
        self._check_kl()
        if self.layers_to_transform is not None and any(i < 0 for i in self.layers_to_transform):
            raise ValueError(
                "'layers_to_transform' holds a negative index; layer indices start at 0"
            )
        return self

    @field_validator("adapter_checkpoints", mode="before")
    @classmethod
    def _saved_steps_are_numbers(cls, value: Any) -> Any:
        # pydantic reads true as 1, which would save an adapter after every optimizer step.
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values) or isinstance(value, str | float):
            raise ValueError(
                f"'adapter_checkpoints' is {json.dumps(value)}; give N (save the adapter every N "
                "optimizer steps, e.g. 50) or a list of steps (e.g. [50, 100, 200])"
            )
        return value

    @field_validator("eval_lora_scales", mode="before")
    @classmethod
    def _scales_are_distinct_numbers(cls, value: Any) -> Any:
        if value is None:
            return value
        numbers = isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in value
        )
        if not numbers or not value or len({float(v) for v in value}) != len(value):
            raise ValueError(
                f"'eval_lora_scales' is {json.dumps(value)}; give a list of different numbers "
                ">= 0 to multiply the adapter's LoRA B matrices by (e.g. [0, 0.5, 1, 1.5, 2])"
            )
        return value

    @field_validator("eval_checkpoints", mode="before")
    @classmethod
    def _evaluated_steps_are_all_or_a_list(cls, value: Any) -> Any:
        if value is None or value == "all":
            return value
        if value == []:
            raise ValueError(
                "'eval_checkpoints' is empty ([]); list saved steps to evaluate (e.g. [50, 100]), "
                'give "all", or remove the key'
            )
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(
                f"'eval_checkpoints' is {json.dumps(value)}; give \"all\" (every saved step) or "
                "a list of saved steps (e.g. [50, 100])"
            )
        return value

    @property
    def inoculation_spec(self) -> Inoculation | None:
        """The instruction rows are trained under: `inoculation`, or `training_system_prompt` as
        its simple form (a system message without loss), or None."""
        if self.training_system_prompt is not None:
            return Inoculation(prompt=self.training_system_prompt)
        return self.inoculation

    @property
    def training_prompt_text(self) -> str | None:
        """The inoculation as results.md names it: `training_system_prompt`'s text as it is, the
        general form's prompts with their placement and loss where not the defaults."""
        spec = self.inoculation_spec
        if spec is None or self.training_system_prompt is not None:
            return self.training_system_prompt
        text = " | ".join(spec.prompts)
        notes = [f"placement {spec.placement}"] * (spec.placement != "system")
        notes += ["with loss"] * spec.loss
        return text + (f" ({', '.join(notes)})" if notes else "")

    def _check_kl(self) -> None:
        # Upstream's checks (base_train_config.py, validate_kl_regularization).
        if self.kl_regularization and not self.kl_dataset_file:
            raise ValueError(
                "'kl_regularization' is true but 'kl_dataset_file' is missing; name the KL "
                "dataset (a dataset of datasets.sources or a JSONL path)"
            )
        if self.kl_regularization and self.kl_weight <= 0:
            raise ValueError(
                f"'kl_weight' is {self.kl_weight}; with kl_regularization it must be positive "
                "(upstream's KL config uses 100000)"
            )

    def _check_early_stopping(self) -> None:
        if self.early_stopping_patience is None:
            if self.early_stopping_threshold is not None:
                raise ValueError(
                    "'early_stopping_threshold' needs 'early_stopping_patience' (how many "
                    "evaluations without improvement stop the run); add it or remove the threshold"
                )
            return
        if self.evaluation_steps is None:
            raise ValueError(
                "'early_stopping_patience' stops on the held-out loss, but 'evaluation_steps' is "
                "null so the run is never evaluated; set evaluation_steps (e.g. 50)"
            )
        if self.test_file is None and self.test_size == 0:
            raise ValueError(
                "'early_stopping_patience' stops on the held-out loss, but 'test_size' is 0 and "
                "there is no 'test_file'; hold out rows (test_size > 0) or give a test_file"
            )

    def _check_checkpoints(self) -> None:
        saved = self.adapter_checkpoints
        if isinstance(saved, int) and saved <= 0:
            raise ValueError(f"'adapter_checkpoints' is {saved}; save every N >= 1 steps")
        if isinstance(saved, list) and (not saved or any(s <= 0 for s in saved)):
            raise ValueError(
                f"'adapter_checkpoints' is {saved}; list optimizer steps >= 1 (or give N for "
                "every N steps)"
            )
        wanted = self.eval_checkpoints
        if wanted is None:
            return
        if saved is None:
            raise ValueError(
                "'eval_checkpoints' needs saved checkpoints; add 'adapter_checkpoints' (N for "
                "every N steps, or a list of steps)"
            )
        if isinstance(wanted, list):
            unsaved = [s for s in wanted if not self.saves_checkpoint(s)]
            if unsaved:
                raise ValueError(
                    f"'eval_checkpoints' lists steps {unsaved} that 'adapter_checkpoints' "
                    f'({saved}) does not save; give "all" or a list of saved steps'
                )

    def check_saved_steps(self, total_steps: int, source: str) -> None:
        """`adapter_checkpoints` saves within a run of `total_steps` optimizer steps: a step past
        the last one would be silently never saved (and never evaluated)."""
        saved = self.adapter_checkpoints
        if isinstance(saved, int) and saved > total_steps:
            raise EmflowError(
                f"{source}: adapter_checkpoints is {saved}, but the run has {total_steps} "
                f"optimizer steps, so no adapter would be saved; use N of at most {total_steps} "
                "or list the steps to save."
            )
        late = sorted(s for s in saved if s > total_steps) if isinstance(saved, list) else []
        if late:
            raise EmflowError(
                f"{source}: adapter_checkpoints lists step{'s' if len(late) > 1 else ''} "
                f"{', '.join(map(str, late))}, but the run has {total_steps} optimizer steps; "
                f"list steps up to {total_steps}."
            )

    def saves_checkpoint(self, step: int) -> bool:
        """Whether `adapter_checkpoints` keeps the adapter after optimizer step `step`."""
        saved = self.adapter_checkpoints
        if saved is None or step < 1:
            return False
        return step % saved == 0 if isinstance(saved, int) else step in saved

    def checkpoint_steps(self, total_steps: int) -> list[int]:
        """The saved steps of a run of `total_steps` optimizer steps (the last one included
        when a checkpoint falls on it)."""
        return [s for s in range(1, total_steps + 1) if self.saves_checkpoint(s)]

    @property
    def mix(self) -> dict[str, int | None]:
        """The training data as a mix: a single training_file is a mix of all its rows."""
        if self.datasets is not None:
            return dict(self.datasets)
        assert self.training_file is not None
        return {self.training_file: None}

    @property
    def training_seeds(self) -> list[int]:
        """The seed of each run of this experiment: `seeds`, or just `seed`."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def for_seed(self, seed: int) -> ExperimentConfig:
        """The config of this experiment's run with training seed `seed` (one run, no `seeds`)."""
        if seed not in self.training_seeds:
            raise ValueError(
                f"seed {seed} is not one of this experiment's seeds {self.training_seeds}"
            )
        return self.model_copy(update={"seed": seed, "seeds": None})

    def training_params(self) -> dict[str, Any]:
        """The keys that determine the trained adapter, sorted, without data paths or hub keys."""
        data = self.model_dump()
        left_out = NON_TRAINING_KEYS | DATA_KEYS | REPLICATE_KEYS | UNSUPPORTED_KEYS.keys()
        left_out |= EVALUATION_KEYS | {"kl_dataset_file"}
        if not self.kl_regularization:
            left_out |= KL_KEYS
        left_out |= {k for k in OMITTED_WHEN_UNSET_KEYS if data[k] is None}
        return {k: data[k] for k in sorted(data) if k not in left_out}

    @classmethod
    def from_training_params(
        cls, params: dict[str, Any], training_file: str, kl_dataset_file: str | None = None
    ) -> ExperimentConfig:
        """The config a training job runs: its `training_params()`, its training file and (with
        kl_regularization) its KL file.

        The train rule passes these rather than the config.json path, so that the job reads no
        file it has not declared, and a key that changes no adapter reruns nothing.
        """
        kl = {"kl_dataset_file": kl_dataset_file} if kl_dataset_file is not None else {}
        return cls.model_validate(params | {"training_file": training_file} | kl)


def _describe(error: dict[str, Any], known: list[str]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(str(error["loc"][0]), known, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else "remove it or check the spelling"
        return f"unknown key '{location}' ({hint})"
    if error["type"] == "missing":
        return f"the required key '{location}' is missing; add it"
    if not location or error["type"] == "value_error":
        # emflow's own checks: the message names the key and the fix already.
        return error["msg"].removeprefix("Value error, ")
    return f"key '{location}': {error['msg']} (got {error.get('input')!r})"


def parse_experiment_config(data: Any, source: str) -> ExperimentConfig:
    """Validate a config mapping; errors name `source` and the offending key."""
    if not isinstance(data, dict):
        raise EmflowError(f"{source}: the config must be a JSON object of keys and values.")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        known = list(ExperimentConfig.model_fields)
        first = _describe(err.errors()[0], known)
        more = len(err.errors()) - 1
        tail = f" ({more} more problem{'s' if more > 1 else ''} after this one)" if more else ""
        raise EmflowError(f"{source}: {first}{tail}.") from None


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate one experiment's config.json."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise EmflowError(
            f"{path}: no such file; every experiment folder needs a config.json."
        ) from None
    except json.JSONDecodeError as err:
        raise EmflowError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}); fix the syntax."
        ) from None
    return parse_experiment_config(data, str(path))
