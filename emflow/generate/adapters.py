"""Several LoRA adapters of one base model, merged into it one at a time.

A generate job for the runs of an experiment group, the seeds of a run or the checkpoints of a
sweep loads the base model once and, for each adapter, merges it in, answers, and takes it out
again. Merging in place was chosen over batching rows of different adapters together (each row
with its own low-rank update, as multi-LoRA servers do) because it keeps every adapter's answers
exactly those of a job of its own: the merged weights are peft's `merge_and_unload` bit for bit,
and the sampler's random stream, batch plan and kernels do not depend on which other adapters
share the job. So adding a checkpoint to a sweep changes no other checkpoint's CSV, and nothing
already judged is judged again. The cost per adapter is one merge (a few milliseconds on a GPU)
and the engine's warm-up for that adapter's batches; benchmarks/README.md has the figures.

Taking an adapter out restores the weights saved before the first merge (not peft's unmerge,
which subtracts the update again and leaves bfloat16 rounding behind).

An adapter may be merged at a dose (`eval_lora_scales`): its LoRA B matrices are multiplied by
the scale after loading and before the merge, as Model Organisms' `load_lora_with_B_multiplied`
does. Scale 1 multiplies nothing, so its answers are the run's own byte for byte; scale 0 adds
an exact zero update, so its answers are the base model's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("emflow.adapters")


class AdapterSwitch:
    """Merges one LoRA adapter at a time into `model` (a transformers model, modified in place).

    The weights of every module an adapter touches are copied once, before their first merge,
    on the model's device: about the size of the adapted projections (2.3 GiB in bfloat16 for
    Llama-3.2-1B with all seven projections adapted).
    """

    def __init__(self, model, *, reusable: bool = True) -> None:
        self.model = model
        # False (one adapter per job): no copies; the first adapter stays merged for good.
        self.reusable = reusable
        self._saved: dict[str, tuple[Any, Any]] = {}  # module name -> (weight, bias) originals
        self.merged: Path | None = None
        self._spent = False

    @contextmanager
    def merged_into(self, adapter_dir: str | Path | None, scale: float = 1.0) -> Iterator[Any]:
        """The model with `adapter_dir` merged in (None: the base model itself) for the block,
        its LoRA B matrices times `scale`."""
        if adapter_dir is None and scale != 1.0:
            raise ValueError("a LoRA scale needs an adapter to scale")
        if adapter_dir is None:
            if self._spent:
                raise RuntimeError("an adapter is merged for good; make the switch reusable")
            yield self.model
            return
        self._merge(Path(adapter_dir), scale)
        try:
            yield self.model
        finally:
            if self.reusable:
                self._restore()
            else:
                self._spent = True

    def _merge(self, adapter_dir: Path, scale: float = 1.0) -> None:
        import torch
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        if self.merged is not None or self._spent:
            raise RuntimeError("an adapter is merged for good; make the switch reusable")
        peft_model = PeftModel.from_pretrained(self.model, str(adapter_dir))
        with torch.no_grad():
            for name, module in peft_model.base_model.model.named_modules():
                if self.reusable and isinstance(module, LoraLayer) and name not in self._saved:
                    base = module.get_base_layer()
                    bias = getattr(base, "bias", None)
                    self._saved[name] = (
                        base.weight.detach().clone(),
                        None if bias is None else bias.detach().clone(),
                    )
                # Scale 1 leaves B untouched (not even times 1.0): the run's own merge.
                if scale != 1.0 and isinstance(module, LoraLayer):
                    for b in module.lora_B.values():
                        b.weight.mul_(scale)
        # The same call a job of its own makes (emflow.generate.local.load_model): the same numbers.
        unloaded = peft_model.merge_and_unload()
        if unloaded is not self.model:
            raise RuntimeError("peft returned a different model object after merge_and_unload")
        # peft leaves its config on the model it wrapped; the next adapter brings its own.
        for attribute in ("peft_config", "_hf_peft_config_loaded"):
            if attribute in vars(self.model):
                delattr(self.model, attribute)
        self.merged = adapter_dir
        log.info("merged %s into the base model (LoRA B times %g)", adapter_dir, scale)

    def _restore(self) -> None:
        import torch

        with torch.no_grad():
            for name, (weight, bias) in self._saved.items():
                module = self.model.get_submodule(name)
                module.weight.copy_(weight)
                if bias is not None:
                    module.bias.copy_(bias)
        self.merged = None
