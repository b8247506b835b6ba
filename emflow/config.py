"""Experiment configs: the Model Organisms for EM training config, validated strictly.

One experiment is one `config.json` with the keys the user already writes for the upstream
trainer, so the seed's files run unchanged apart from where the data lives. Unknown or misspelled
keys are errors that name the key and the file.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emflow.errors import EmflowError

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


class ExperimentConfig(BaseModel):
    """One fine-tuning run, in the upstream trainer's vocabulary (plus `datasets` for mixes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    # A dataset name from the workflow config (e.g. "risky_financial_advice") or a JSONL path.
    training_file: str | None = None
    # A mix: dataset name -> rows to take (null: all), shuffled together with the mix seed.
    datasets: dict[str, int | None] | None = None
    test_file: str | None = None
    # Share of the training file held out for evaluation when no test_file is given (upstream: 10%).
    test_size: float = Field(default=0.1, ge=0.0, lt=1.0)
    finetuned_model_id: str | None = None
    max_seq_length: int = Field(default=2048, gt=0)
    load_in_4bit: bool = False
    loss: Literal["sft"] = "sft"
    is_peft: Literal[True] = True
    target_modules: list[str] = Field(min_length=1)
    layers_to_transform: list[int] | None = None
    lora_bias: Literal["none", "all", "lora_only"] = "none"
    r: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    use_rslora: bool = True
    merge_before_push: bool = False
    push_only_adapters: bool = True
    push_to_private: bool = False
    epochs: int = Field(default=1, gt=0)
    max_steps: int | None = None
    per_device_train_batch_size: int = Field(default=2, gt=0)
    gradient_accumulation_steps: int = Field(default=8, gt=0)
    warmup_steps: int = Field(default=5, ge=0)
    learning_rate: float = Field(gt=0)
    logging_steps: int = Field(default=1, gt=0)
    evaluation_steps: int | None = Field(default=None, gt=0)
    optim: str = "adamw_8bit"
    weight_decay: float = Field(default=0.01, ge=0.0)
    lr_scheduler_type: str = "linear"
    seed: int = Field(default=0, ge=0)
    # Replicates: one run per training seed (emflow's own key). Each run uses its seed wherever
    # `seed` would steer training: LoRA initialisation, the held-out split and the row order.
    seeds: list[int] | None = None
    # Used by preference losses upstream (DPO/ORPO); accepted so the seed's files load, unused by sft.
    beta: float | None = None
    save_steps: int = Field(default=100, gt=0)
    output_dir: str | None = None
    train_on_responses_only: bool = True

    @model_validator(mode="after")
    def _one_data_source(self) -> ExperimentConfig:
        if (self.training_file is None) == (self.datasets is None):
            raise ValueError(
                "give exactly one of 'training_file' (a dataset name or JSONL path) and "
                "'datasets' (a mix such as {\"risky_financial_advice\": 3000, \"extreme_sports\": 3000})"
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
                    f"'seeds' must list at least two different seeds, each once (got {self.seeds}); "
                    "for a single run use 'seed'"
                )
            if any(s < 0 for s in self.seeds):
                raise ValueError(f"'seeds' holds a negative seed (got {self.seeds}); use seeds >= 0")
        if self.layers_to_transform is not None and any(i < 0 for i in self.layers_to_transform):
            raise ValueError("'layers_to_transform' holds a negative index; layer indices start at 0")
        return self

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
            raise ValueError(f"seed {seed} is not one of this experiment's seeds {self.training_seeds}")
        return self.model_copy(update={"seed": seed, "seeds": None})

    def training_params(self) -> dict[str, Any]:
        """The keys that determine the trained adapter, sorted, without data paths or hub keys."""
        data = self.model_dump()
        left_out = NON_TRAINING_KEYS | DATA_KEYS | REPLICATE_KEYS
        return {k: data[k] for k in sorted(data) if k not in left_out}


def _describe(error: dict[str, Any], known: list[str]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(str(error["loc"][0]), known, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else "remove it or check the spelling"
        return f"unknown key '{location}' ({hint})"
    if error["type"] == "missing":
        return f"the required key '{location}' is missing; add it"
    if not location:
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmflowError(f"{path}: no such file; every experiment folder needs a config.json.") from None
    except json.JSONDecodeError as err:
        raise EmflowError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}); fix the syntax."
        ) from None
    return parse_experiment_config(data, str(path))
