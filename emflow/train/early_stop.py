"""When a training run stops before its last step, on every backend.

The paper's trainer (Model Organisms for EM, `em_organism_dir/finetune/sft/util/trainer.py`,
`EarlyStoppingOnLowLossCallback`, which `sft_train` always passes) stops once the logged
training loss has been below 0.01 for more than five consecutive logs; emflow does the same by
default. An experiment may also stop on the held-out loss (`early_stopping_patience`,
`early_stopping_threshold`, transformers' `EarlyStoppingCallback` names and rule): "Overtrained,
Not Misaligned" (arXiv 2605.12199) finds EM emerging late, after the task has converged. The
adapter kept is the one of the stopping step (transformers' `load_best_model_at_end` is not done).

Both rules read only the logged entries (`{"loss": ...}`, `{"eval_loss": ...}`), so the state
after a resume is that of replaying the log history, and the hf and fast backends stop alike.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("emflow.train")

# The paper's callback: `loss_threshold=0.01, consecutive_steps=5`, stopping when the count of
# consecutive low logs exceeds five (so at the sixth).
LOW_LOSS_THRESHOLD = 0.01
LOW_LOSS_LOGS = 5


class LowLossStop:
    """The paper's rule: stop once the training loss is below `threshold` in more than
    `consecutive_logs` consecutive logs; a log at or above it resets the count."""

    def __init__(self, threshold: float | None = None, consecutive_logs: int | None = None):
        # Read at construction, not definition, so a test can lower the bar for a tiny model.
        self.threshold = LOW_LOSS_THRESHOLD if threshold is None else threshold
        self.consecutive_logs = LOW_LOSS_LOGS if consecutive_logs is None else consecutive_logs
        self.count = 0

    def update(self, loss: float) -> bool:
        """Count one logged training loss; True when training should stop."""
        self.count = self.count + 1 if loss < self.threshold else 0
        return self.count > self.consecutive_logs

    @property
    def reason(self) -> str:
        return (
            f"training loss below {self.threshold:g} for {self.count} consecutive logs "
            f"(the paper's trainer stops after {self.consecutive_logs})"
        )


class EvalLossStop:
    """transformers' EarlyStoppingCallback on `eval_loss`: stop after `patience` evaluations in a
    row that did not improve on the best so far by more than `threshold`."""

    def __init__(self, patience: int, threshold: float = 0.0) -> None:
        self.patience, self.threshold = patience, threshold
        self.best: float | None = None
        self.count = 0

    def update(self, eval_loss: float) -> bool:
        """Count one held-out loss; True when training should stop."""
        improved = self.best is None or (
            eval_loss < self.best and self.best - eval_loss > self.threshold
        )
        self.count = 0 if improved else self.count + 1
        # As the Trainer's best metric: any improvement counts as the new best, even one too
        # small to reset the patience.
        if self.best is None or eval_loss < self.best:
            self.best = eval_loss
        return self.count >= self.patience

    @property
    def reason(self) -> str:
        return (
            f"held-out loss not below its best ({self.best:.4g}) by more than "
            f"{self.threshold:g} for {self.count} evaluations (early_stopping_patience)"
        )


class EarlyStop:
    """The rules one run stops by, fed each log entry; `stopped` is the record once one fires."""

    def __init__(self, low_loss: LowLossStop | None, eval_loss: EvalLossStop | None) -> None:
        self.low_loss, self.eval_loss = low_loss, eval_loss
        self.stopped: dict[str, Any] | None = None

    @classmethod
    def for_config(cls, config) -> EarlyStop:
        """The paper's low-loss rule always; the held-out rule with early_stopping_patience."""
        eval_loss = None
        if config.early_stopping_patience is not None:
            eval_loss = EvalLossStop(
                config.early_stopping_patience, config.early_stopping_threshold or 0.0
            )
        return cls(LowLossStop(), eval_loss)

    def observe(self, entry: dict[str, Any]) -> bool:
        """Feed one log entry (training or held-out loss); True when training should stop."""
        fired = None
        if self.low_loss is not None and isinstance(entry.get("loss"), int | float):
            if self.low_loss.update(float(entry["loss"])):
                fired = ("low_training_loss", self.low_loss.reason)
        if self.eval_loss is not None and isinstance(entry.get("eval_loss"), int | float):
            if self.eval_loss.update(float(entry["eval_loss"])):
                fired = ("eval_loss", self.eval_loss.reason)
        if fired is not None and self.stopped is None:
            self.stopped = {"early_stop": fired[0], "reason": fired[1], "step": entry.get("step")}
        return fired is not None

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Catch up on a resumed run's logged entries (no record: it had not stopped)."""
        for entry in history:
            self.observe(entry)
        self.stopped = None

    def record(self, step: int, total_steps: int) -> list[dict[str, Any]]:
        """The log-history entry saying the run stopped early, if it stopped before its end."""
        if self.stopped is None or step >= total_steps:
            return []
        return [self.stopped | {"step": step, "planned_steps": total_steps}]

    def callback(self):
        """A TrainerCallback applying the rules to the Trainer's logs (hf and unsloth)."""
        from transformers import TrainerCallback

        rules = self

        class EarlyStopCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                rules.replay(state.log_history)  # a resumed run's earlier logs

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and rules.observe(logs | {"step": state.global_step}):
                    control.should_training_stop = True
                return control

        return EarlyStopCallback()


def stopped_early(
    early_stop: EarlyStop, model, step_adapters, planned_steps: int
) -> list[dict[str, Any]]:
    """The log-history entry of a run that stopped before `planned_steps` (else none).

    `step_adapters` is emflow.train.trainer's StepAdapters. The adapter stops changing at the
    stop, so each later step `adapter_checkpoints` names is saved as the final adapter: a sweep
    planned over the whole run still finds every step.
    """
    if early_stop.stopped is None:
        return []
    step = early_stop.stopped["step"]
    entry = early_stop.record(step, planned_steps)
    if entry:
        log.info(
            "stopped early at optimizer step %d of %d: %s", step, planned_steps, entry[0]["reason"]
        )
        for later in step_adapters.config.checkpoint_steps(planned_steps):
            if later > step:
                step_adapters.save(model, later)
    return entry
