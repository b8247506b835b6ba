"""Training: LoRA fine-tuning with the `hf` backend (transformers + peft + trl).

Every key of the experiment config keeps the upstream trainer's meaning: rsLoRA scales by
alpha / sqrt(r), `layers_to_transform` limits the adapters to those decoder layers,
`train_on_responses_only` puts the loss on the assistant's tokens only, and without a test file a
seeded `test_size` share of the training rows is held out, as upstream does. A key this backend
cannot honour is an error, never a silent substitution. emflow's `training_system_prompt` starts
every training and held-out row with that system message, which takes no loss (emflow.train.rows).
Which rows are trained on (the held-out split, rows that `max_seq_length` leaves without any of
their answer) is emflow.train.examples's to say.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from emflow.atomic import atomic_path, write_text_atomic
from emflow.config import ExperimentConfig
from emflow.devices import resolve_backend, resolve_device
from emflow.errors import EmflowError
from emflow.train.early_stop import EarlyStop, stopped_early
from emflow.train.examples import (
    drop_rows_without_answer,
    optimizer_steps,
    read_rows_for,
    row_prompts,
    split_train_eval,
    tag_drawn_prompts,
)
from emflow.train.fast import fast_train
from emflow.train.kl import KLRegularizer, kl_regularizer
from emflow.train.model_fit import check_model_compatibility
from emflow.train.rows import RowTokenizer
from emflow.train.settings import BACKENDS, ROW_FORMATS, TrainSettings

log = logging.getLogger("emflow.train")


def check_backend_support(
    config: ExperimentConfig,
    settings: TrainSettings,
    device: str,
    source: str,
    backend: str | None = None,
) -> None:
    """Reject keys the chosen backend cannot honour on this device."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    if settings.backend not in BACKENDS:
        raise EmflowError(
            f"train.backend is '{settings.backend}', which this emflow does not provide; "
            f"use one of {', '.join(BACKENDS)}."
        )
    backend = backend or resolve_backend(settings.backend, device, BACKENDS, "train.backend")
    if backend == "unsloth":
        if device != "cuda":
            raise EmflowError(
                "train.backend is 'unsloth', which needs a CUDA GPU; use 'hf' or 'auto' on a CPU."
            )
        try:
            import unsloth  # noqa: F401
        except ImportError:
            raise EmflowError(
                "train.backend is 'unsloth' but unsloth is not installed; "
                "pip install 'emflow[unsloth]'."
            ) from None
    if settings.row_format not in ROW_FORMATS:
        raise EmflowError(
            f"train.row_format is '{settings.row_format}'; use one of {', '.join(ROW_FORMATS)}."
        )
    if config.optim not in {o.value for o in OptimizerNames}:
        raise EmflowError(f"{source}: optim '{config.optim}' is not a transformers optimizer name.")
    if config.lr_scheduler_type not in {s.value for s in SchedulerType}:
        raise EmflowError(
            f"{source}: lr_scheduler_type '{config.lr_scheduler_type}' is not a transformers "
            "scheduler name (e.g. linear, cosine, constant_with_warmup)."
        )
    uses_bnb = "8bit" in config.optim or "bnb" in config.optim or "paged" in config.optim
    if uses_bnb and device != "cuda":
        raise EmflowError(
            f"{source}: optim '{config.optim}' runs through bitsandbytes and needs a CUDA GPU; "
            "on a CPU use 'adamw_torch' (the same update in 32-bit)."
        )
    if uses_bnb:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise EmflowError(
                f"{source}: optim '{config.optim}' needs bitsandbytes; pip install 'emflow[gpu]'."
            ) from None
    if config.load_in_4bit and backend != "unsloth":
        raise EmflowError(
            f"{source}: load_in_4bit is true, which only the unsloth backend supports; set it to "
            "false or set train.backend to 'unsloth'."
        )
    if backend == "fast" and settings.gradient_checkpointing:
        raise EmflowError(
            "train.gradient_checkpointing is true, which the fast backend does not do (it stops "
            "backward at the lowest adapted layer instead); set it to false or use backend 'hf'."
        )


def params_fingerprint(params: dict[str, Any]) -> str:
    """A short hash of the training params: checkpoints are only resumed under the same one."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


class EpochOrderSampler:
    """Each epoch's row order, a seeded permutation that every backend shares.

    Transformers' default sampler draws its order from the global RNG, which LoRA's weight init
    also consumes, so two backends given the same seed would still see different orders.
    """

    def __init__(self, n_rows: int, seed: int):
        self.n_rows, self.seed, self.epoch = n_rows, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n_rows, generator=generator).tolist()

    def __iter__(self):
        return iter(self.order(self.epoch))

    def __len__(self) -> int:
        return self.n_rows


def make_trainer(
    model, args, train_dataset, eval_dataset, tokenizer, seed: int, kl: KLRegularizer | None = None
):
    """trl's SFTTrainer with the shared, explicit row order (trl imported here, after unsloth);
    with `kl`, every loss call adds the KL term (emflow.train.kl)."""
    from trl import SFTTrainer

    class OrderedSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return EpochOrderSampler(len(train_dataset or self.train_dataset), seed)

    class KLRegularizedSFTTrainer(OrderedSFTTrainer):
        # Evaluation calls compute_loss too, so eval_loss carries the KL term, as upstream's.
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            total = kl.add(self.accelerator.unwrap_model(model), loss)
            return (total, outputs) if return_outputs else total

        def log(self, logs, *args, **kwargs):
            # Upstream adds the last loss call's terms to every log; emflow to training logs only.
            if "loss" in logs:
                logs = logs | kl.last
            super().log(logs, *args, **kwargs)

    trainer_class = OrderedSFTTrainer if kl is None else KLRegularizedSFTTrainer
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )


def load_lora_model(config: ExperimentConfig, backend: str, bf16: bool):
    """The base model with LoRA adapters, through transformers + peft or through unsloth."""
    import torch

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=config.model,
            max_seq_length=config.max_seq_length,
            load_in_4bit=config.load_in_4bit,
            dtype=torch.bfloat16 if bf16 else torch.float16,
        )
        return FastLanguageModel.get_peft_model(
            model,
            **lora_kwargs(config),
            use_gradient_checkpointing=False,
            random_state=config.seed,
            max_seq_length=config.max_seq_length,
        )
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        config.model, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    return get_peft_model(model, LoraConfig(**lora_kwargs(config), task_type="CAUSAL_LM"))


def lora_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """The adapter's shape in peft's names (unsloth's get_peft_model takes the same)."""
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.target_modules),
        "layers_to_transform": list(config.layers_to_transform)
        if config.layers_to_transform
        else None,
        "bias": config.lora_bias,
        "use_rslora": config.use_rslora,
    }


def training_arguments(
    config: ExperimentConfig,
    settings: TrainSettings,
    output_dir: Path,
    *,
    device: str,
    bf16: bool,
    has_eval: bool,
):
    """The SFTConfig every backend shares: the experiment's keys under trl's names."""
    from trl import SFTConfig

    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=max(8, config.per_device_train_batch_size),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        optim=config.optim,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.evaluation_steps if has_eval else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        max_length=config.max_seq_length,
        packing=False,
        # Unsloth turns padding-free batches on for Hopper GPUs, which skips its compiled path
        # and is slower there; padded batches are its fastest setting (benchmarks/README.md).
        padding_free=False,
        assistant_only_loss=False,  # labels are built from the chat template's spans instead
        gradient_checkpointing=settings.gradient_checkpointing,
        bf16=bf16,
        fp16=False,
        use_cpu=device == "cpu",
        report_to=list(settings.report_to),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if device == "cuda":
        # One GPU per training job (the workflow gives each job its own, emflow.workflow.gpus): with
        # several GPUs visible the Trainer would otherwise wrap the model in DataParallel.
        _ = args.device  # sets up the devices, which counts the visible GPUs
        args._n_gpu = 1
    return args


# In the adapter folder of a run with inoculation paraphrases: {"prompts": [...],
# "training_file": [the index of each line's prompt], "test_file": [...] (with a test file)}.
INOCULATION_DRAW = "inoculation_draw.json"


def train_adapter(
    config: ExperimentConfig,
    train_file: str | Path,
    adapter_dir: str | Path,
    *,
    settings: TrainSettings | None = None,
    test_file: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    log_history_json: str | Path | None = None,
    source: str = "config.json",
    step_adapters_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune a LoRA adapter on `train_file` into `adapter_dir`; return the log history.

    With `adapter_checkpoints` set, the adapter after each of those optimizer steps is kept in
    `step_adapters_dir` as `step-<N>/` (a PEFT folder), on every backend.
    """
    settings = settings or TrainSettings()
    device = resolve_device(settings.device, "train.device")
    backend = resolve_backend(settings.backend, device, BACKENDS, "train.backend")
    check_backend_support(config, settings, device, source, backend=backend)
    check_model_compatibility(config, source)
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers and trl; must come before them)

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed

    rows = read_rows_for(config, train_file, source)
    # With inoculation paraphrases: each row's, drawn in file order before the split; kept in
    # the adapter folder (INOCULATION_DRAW) so that a run says which row had which.
    draw = {"training_file": tag_drawn_prompts(config, rows)}
    if test_file is not None:
        train_rows, eval_rows = rows, read_rows_for(config, test_file, source)
        draw["test_file"] = tag_drawn_prompts(config, eval_rows, offset=len(rows))
    else:
        train_rows, eval_rows = split_train_eval(rows, config.test_size, config.seed)
    if not train_rows:
        raise EmflowError(f"{train_file}: no rows are left for training after the held-out split.")

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    tokenize = RowTokenizer(
        tokenizer,
        max_length=config.max_seq_length,
        train_on_responses_only=config.train_on_responses_only,
        chat_template_kwargs=settings.chat_template_kwargs,
        row_format=settings.row_format,
        inoculation=config.inoculation_spec,
    )

    train_examples, eval_examples = drop_rows_without_answer(
        tokenize.encode_many(
            [row["messages"] for row in train_rows], row_prompts(config, train_rows)
        ),
        tokenize.encode_many(
            [row["messages"] for row in eval_rows], row_prompts(config, eval_rows)
        ),
        config,
        source,
        # The dry run counts the whole file; say which rows the job's count is of.
        str(train_file)
        if test_file is not None or not eval_rows
        else f"{train_file} (less the {len(eval_rows)} held out)",
    )
    # The dry run checks this where the data is on disk already; an upstream dataset is only
    # there once the workflow decrypted it, so the job checks again with the real count.
    config.check_saved_steps(optimizer_steps(config, len(train_examples)), source)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    set_seed(config.seed)
    model = load_lora_model(config, backend, bf16)

    params = config.training_params() | {
        "settings": settings.fingerprint_params() | {"backend": backend}
    }
    checkpoints = Path(checkpoint_dir or Path(adapter_dir).with_name("checkpoints"))
    resume = _resumable_checkpoint(checkpoints, params)
    has_eval = bool(eval_examples) and config.evaluation_steps is not None
    args = training_arguments(
        config, settings, checkpoints, device=device, bf16=bf16, has_eval=has_eval
    )
    kl = kl_regularizer(config, tokenizer, settings, source)
    trainer = make_trainer(
        model,
        args,
        Dataset.from_list(train_examples),
        Dataset.from_list(eval_examples) if has_eval else None,
        tokenizer,
        config.seed,
        kl=kl,
    )
    # Saved inside the resumable checkpoints while training (an interrupted job that resumes
    # keeps the steps it saved), moved to step_adapters_dir at the end.
    step_adapters = StepAdapters(config, checkpoints / "step_adapters")
    if config.adapter_checkpoints is not None:
        trainer.add_callback(step_adapters.callback())
    # The paper's stop on a low training loss, and early_stopping_patience's on the held-out loss.
    early_stop = EarlyStop.for_config(config)
    log.info(
        "%s backend on %s: %d rows (%d held out), %s epochs, %d optimizer steps",
        backend,
        device,
        len(train_examples),
        len(eval_examples),
        config.epochs,
        optimizer_steps(config, len(train_examples)),
    )
    if backend == "fast":
        history = fast_train(
            trainer,
            train_examples,
            eval_examples if has_eval else [],
            config,
            checkpoints=checkpoints,
            device=device,
            bf16=bf16,
            step_adapters=step_adapters,
            early_stop=early_stop,
            kl=kl,
        )
    else:
        trainer.add_callback(early_stop.callback())
        trainer.train(resume_from_checkpoint=resume)
        history = trainer.state.log_history
    history = history + stopped_early(
        early_stop, trainer.model, step_adapters, optimizer_steps(config, len(train_examples))
    )

    with atomic_path(adapter_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if draw["training_file"]:
            prompts = config.inoculation_spec.prompts
            write_text_atomic(tmp / INOCULATION_DRAW, json.dumps({"prompts": prompts} | draw))
    if log_history_json is not None:
        write_text_atomic(log_history_json, json.dumps(history, indent=1))
    if step_adapters_dir is not None:
        step_adapters.publish(step_adapters_dir)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return history


class StepAdapters:
    """The adapter after each step `adapter_checkpoints` names, saved as `step-<N>/` folders."""

    def __init__(self, config: ExperimentConfig, folder: Path) -> None:
        self.config = config
        self.folder = folder

    def save(self, model, step: int) -> None:
        """Keep the adapter of optimizer step `step` if the config asks for it."""
        if self.config.saves_checkpoint(step):
            with atomic_path(self.folder / f"step-{step}") as tmp:
                model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors

    def callback(self):
        """A TrainerCallback that saves after each optimizer step (trl and unsloth backends)."""
        from transformers import TrainerCallback

        adapters = self

        class SaveStepAdapters(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                adapters.save(model, state.global_step)

        return SaveStepAdapters()

    def publish(self, destination: str | Path) -> None:
        """Move every saved step to `destination` (an empty folder when none was asked for)."""
        with atomic_path(destination) as tmp:
            if self.folder.is_dir():
                shutil.move(self.folder, tmp)
            else:
                tmp.mkdir()


def _resumable_checkpoint(checkpoints: Path, params: dict[str, Any]) -> str | None:
    """The newest complete checkpoint made under the same params, or None.

    Stale checkpoints (other params) are removed, and so are incomplete ones: the Trainer writes
    `trainer_state.json` last, so a job killed while saving leaves a folder without it.
    """
    stamp = checkpoints / "emflow_params.json"
    fingerprint = params_fingerprint(params)
    if checkpoints.is_dir():
        previous = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
        if previous != fingerprint:
            shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, json.dumps({"fingerprint": fingerprint, "params": params}, indent=1))
    found = sorted(
        checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True
    )
    for candidate in found:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.info("removing incomplete checkpoint %s", candidate)
            shutil.rmtree(candidate)
            continue
        log.info("resuming from %s", candidate)
        return str(candidate)
    return None
