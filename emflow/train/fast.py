"""The fast training path: the same optimisation as trl's SFTTrainer, with less work per step.

What stays the same as the `hf` backend (and so as the configured run): the rows and their order
(`EpochOrderSampler`), the optimizer and learning-rate schedule (built by the same SFTTrainer
object), gradient clipping at `max_grad_norm`, and the loss: the sum of token cross-entropies over
the assistant tokens of all the step's rows, divided by their count, exactly as transformers
normalises over accumulated micro-batches.

What changes is only how that arithmetic is scheduled:

- the rows of one optimizer step (per-device batch x accumulation) run as one batch, right-padded
  to a length bucket; with causal attention, padding after a row's last token cannot reach it, so
  no attention mask is needed and every step has one of a few shapes;
- the decoder layers below the lowest adapted layer are frozen and see the same rows every epoch:
  their output is computed once per row and kept, and backward stops at the lowest adapted layer
  (no gradient checkpointing, no input-gradient hook);
- the language-model head runs only on positions that carry a label (with CUDA graphs: the
  layers' graph per row length, then the head, eagerly, on the labelled positions gathered).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from emflow.atomic import atomic_path
from emflow.train.fast_kl import FastKL
from emflow.train.kl import KLRegularizer

log = logging.getLogger("emflow.train")

BUCKET = 32  # row lengths are padded up to a multiple of this: few shapes, little padding
# With CUDA graphs, where the head runs: "labelled" (after the layers' graph, eagerly, on the
# positions that carry a label: a few large kernels, so launching them costs nothing, and one
# shape per label count would need a graph, and its memory, each) or "dense" (every position, in
# the layers' graph: prompt and padding positions too, about half of a step's head work on the
# seed's rows). benchmarks/README.md.
GRAPHED_HEAD = "labelled"


def lowest_adapted_layer(model) -> int:
    """Index of the lowest decoder layer holding a trainable weight (0 if any sit below layers)."""
    layers = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = re.search(r"\.layers\.(\d+)\.", name)
        if match is None:
            return 0
        layers.append(int(match.group(1)))
    return min(layers) if layers else 0


class _Model:
    """The pieces of a PEFT-wrapped Llama-style model that the fast path calls directly."""

    def __init__(self, peft_model):
        inner = peft_model.get_base_model()
        self.backbone = inner.model
        self.layers = self.backbone.layers
        self.lm_head = inner.get_output_embeddings()
        self.first = lowest_adapted_layer(peft_model)

    def prefix(self, input_ids, position_ids):
        """Hidden states entering the lowest adapted layer (no gradient needed below it)."""
        hidden = self.backbone.embed_tokens(input_ids)
        if self.first:
            rope = self.backbone.rotary_emb(hidden, position_ids)
            for layer in self.layers[: self.first]:
                hidden = layer(hidden, position_ids=position_ids, position_embeddings=rope)
        return hidden

    def upper(self, hidden, position_ids):
        """The adapted layers (and those above them) on the hidden states `prefix` gives."""
        rope = self.backbone.rotary_emb(hidden, position_ids)
        for layer in self.layers[self.first :]:
            hidden = layer(hidden, position_ids=position_ids, position_embeddings=rope)
        return hidden

    def loss_sum(self, hidden, labels, position_ids, tail_labels=None):
        """Summed cross-entropy over labelled positions, their count, and (with `tail_labels`, a
        copy of `labels` with fewer positions kept) the sum over those, ungraded, else None."""
        import torch

        hidden = self.upper(hidden, position_ids)
        targets = labels[:, 1:]
        keep = targets != -100
        selected = self.backbone.norm(hidden[:, :-1][keep])
        logits = self.lm_head(selected).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
        tail = None
        if tail_labels is not None:
            with torch.no_grad():
                tail = torch.nn.functional.cross_entropy(
                    logits, tail_labels[:, 1:][keep], ignore_index=-100, reduction="sum"
                )
        return loss, keep.sum(), tail

    def normed_upper(self, hidden, position_ids):
        """The adapted layers and the final norm: what the head reads at every position."""
        return self.backbone.norm(self.upper(hidden, position_ids))

    def head_loss_sum(self, normed, targets):
        """Summed cross-entropy of the head over normed hidden states [n, hidden] and their
        targets [n] (-100 adds zero)."""
        import torch

        logits = self.lm_head(normed).float()
        return torch.nn.functional.cross_entropy(
            logits, targets, ignore_index=-100, reduction="sum"
        )

    def dense_loss_sum(self, hidden, labels, position_ids, tail_labels=None):
        """The same sum as `loss_sum`, over every position (ignored ones add zero): fixed shapes
        for CUDA graphs, at the cost of running the head on prompt and padding positions too.
        With `tail_labels`, the pair (sum, ungraded sum over `tail_labels`)."""
        import torch

        hidden = self.upper(hidden, position_ids)
        logits = self.lm_head(self.backbone.norm(hidden[:, :-1])).float()
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
        )
        if tail_labels is None:
            return loss
        with torch.no_grad():
            tail = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1),
                tail_labels[:, 1:].flatten(),
                ignore_index=-100,
                reduction="sum",
            )
        return loss, tail


class _GraphedSteps:
    """Forward and backward of the adapted layers as CUDA graphs, one per padded row length.

    At batch 16 and ~130 tokens a step is bound by launching kernels from Python, not by the
    arithmetic; replaying a captured graph launches the whole step at once.
    """

    def __init__(self, parts: _Model, trainable, bf16: bool):
        self.parts, self.trainable, self.bf16 = parts, trainable, bf16
        self.graphs: dict[tuple, Any] = {}  # ("dense" | "layers", row length, ...) -> graphs

    def _autocast(self):
        import torch

        # Graph capture needs autocast's weight-cast cache off.
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False)

    def _replay(self, key, function, inputs):
        """`function(*inputs)` (differentiated in the adapter's weights), replayed from the CUDA
        graphs captured for `key` at its first call."""
        import torch

        if key not in self.graphs:
            trainable = self.trainable

            class Step(torch.nn.Module):
                def parameters(self, recurse=True):
                    return iter(trainable)

                def forward(self, *inputs):
                    return function(*inputs)

            with self._autocast():
                self.graphs[key] = torch.cuda.make_graphed_callables(Step(), inputs)
        with self._autocast():
            return self.graphs[key](*inputs)

    def loss_sum(self, hidden, labels, positions, tail_labels=None, labelled: int | None = None):
        """The summed loss of the step's rows, replayed from graphs.

        With `labelled` (the number of positions that carry a label, counted on the host) and
        GRAPHED_HEAD "labelled": the layers' graph for this row length, then the head, eagerly,
        over exactly the labelled positions. Otherwise, and with `tail_labels` (the KL term's
        log), `dense_loss_sum` as one graph.
        """
        import torch

        if labelled is None or tail_labels is not None or GRAPHED_HEAD != "labelled":
            inputs = (hidden, labels, positions) + (() if tail_labels is None else (tail_labels,))
            key = ("dense", hidden.shape[1], tail_labels is not None)
            return self._replay(key, self.parts.dense_loss_sum, inputs)
        normed = self._replay(
            ("layers", hidden.shape[1]), self.parts.normed_upper, (hidden, positions)
        )
        targets = labels[:, 1:].flatten()
        # The labelled positions, in order (a stable sort of the ignored-position flags puts
        # them first): their count comes from the host, so no synchronisation.
        order = torch.argsort((targets == -100).to(torch.int8), stable=True)[:labelled]
        selected = normed[:, :-1].flatten(0, 1).index_select(0, order)
        with self._autocast():
            return self.parts.head_loss_sum(selected, targets[order])


class _Reporter:
    """The Trainer's `report_to` integrations (wandb, tensorboard, ...), given the fast path's
    log entries at their steps through the Trainer's own callbacks, as `Trainer.log` does."""

    def __init__(self, trainer, total_steps: int, step: int):
        self.trainer = trainer
        self.active = bool(trainer.args.report_to)
        if self.active:
            trainer.state.max_steps, trainer.state.global_step = total_steps, step
            trainer.control = trainer.callback_handler.on_train_begin(
                trainer.args, trainer.state, trainer.control
            )

    def log(self, entries: list[dict[str, Any]]) -> None:
        if not self.active:
            return
        state = self.trainer.state
        for entry in entries:
            state.global_step = entry["step"]
            state.epoch = entry.get("epoch", state.epoch)
            logs = {k: v for k, v in entry.items() if k != "step"}
            self.trainer.control = self.trainer.callback_handler.on_log(
                self.trainer.args, state, self.trainer.control, logs=logs
            )

    def end(self) -> None:
        if self.active:
            trainer = self.trainer
            trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)


def _pad(rows: list, length: int, value, dtype, device):
    import torch

    out = torch.full((len(rows), length), value, dtype=dtype, device=device)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=dtype, device=device)
    return out


def _bucket(length: int, limit: int) -> int:
    return min(limit, BUCKET * math.ceil(length / BUCKET))


def fast_train(
    trainer,
    train_examples: list[dict[str, list[int]]],
    eval_examples: list[dict[str, list[int]]],
    config,
    *,
    checkpoints: Path,
    device: str,
    bf16: bool,
    cuda_graphs: bool = True,
    step_adapters=None,
    early_stop=None,
    kl: KLRegularizer | None = None,
) -> list[dict[str, Any]]:
    """Train `trainer.model` with the fast path; return a log history shaped like the Trainer's.

    `early_stop` (emflow.train.early_stop.EarlyStop) sees each logged entry, as its callback does
    on the hf backend, and ends training after the step where it fires. With `kl`
    (emflow.train.kl), each step adds the KL term of as many KL batches as the hf backend's
    micro-batches, and every held-out batch one more, as the hf backend's loss calls do.
    """
    import torch

    model = trainer.model
    model.to(device)
    model.train()
    parts = _Model(model)
    args = trainer.args
    rows_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(train_examples) / rows_per_step)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    trainable = [p for p in model.parameters() if p.requires_grad]
    sampler = trainer._get_train_sampler()
    # The order is drawn over the trainer's rows and indexes `train_examples`: they must be the
    # same rows (trl drops rows without labels, so emflow.train.examples drops them before
    # either sees them); otherwise steps would train on the wrong rows, or on none.
    if len(sampler) != len(train_examples):
        raise RuntimeError(
            f"the trainer holds {len(sampler)} rows but the fast path was given "
            f"{len(train_examples)}"
        )
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)
    limit = config.max_seq_length

    # The frozen prefix's output for every row, computed once in length-sorted batches and kept
    # in one flat buffer (rows back to back, a zero row at the end for padding): a step then
    # gathers its rows with one indexing kernel and no copy from the host.
    t0 = time.perf_counter()
    lengths = [len(e["input_ids"]) for e in train_examples]
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    total = offsets[-1]
    flat_labels = torch.full((total + 1,), -100, dtype=torch.long, device=device)
    flat_labels[:total] = torch.tensor(
        [t for e in train_examples for t in e["labels"]], dtype=torch.long, device=device
    )
    flat_hidden = None
    by_length = sorted(range(len(train_examples)), key=lengths.__getitem__)
    with torch.no_grad(), autocast:
        for start in range(0, len(by_length), 64):
            chunk = by_length[start : start + 64]
            length = _bucket(max(lengths[i] for i in chunk), limit)
            ids = _pad(
                [train_examples[i]["input_ids"] for i in chunk], length, 0, torch.long, device
            )
            hidden = parts.prefix(ids, torch.arange(length, device=device)[None])
            if flat_hidden is None:
                flat_hidden = hidden.new_zeros(total + 1, hidden.shape[-1])
            for j, i in enumerate(chunk):
                flat_hidden[offsets[i] : offsets[i + 1]] = hidden[j, : lengths[i]]
    offsets_t = torch.tensor(offsets[:-1], device=device)
    lengths_t = torch.tensor(lengths, device=device)
    # Positions of each row whose next token is a label: what the head must score.
    labelled = [sum(t != -100 for t in e["labels"][1:]) for e in train_examples]
    log.info(
        "fast path: layers below %d computed once for %d rows in %.1f s",
        parts.first,
        len(lengths),
        time.perf_counter() - t0,
    )

    graphed = None
    if device == "cuda" and cuda_graphs:
        graphed = _GraphedSteps(parts, trainable, bf16)
    fast_kl = None if kl is None else FastKL(kl, model, parts, device, autocast)

    state = _load_checkpoint(checkpoints, model, optimizer, scheduler)
    step, history = state["step"], state["history"]
    pending: list[dict[str, Any]] = []  # GPU scalars, read back at logging points only
    if early_stop is not None:
        early_stop.replay(history)  # a resumed run's earlier logs
    reporter = _Reporter(trainer, total_steps, step)

    def flush() -> None:
        """Read the pending entries back into the history (and to report_to's integrations)."""
        entries = _read_back(pending)
        history.extend(entries)
        reporter.log(entries)

    orders: dict[int, tuple[list[int], torch.Tensor]] = {}
    t0 = time.perf_counter()
    while step < total_steps:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in orders:
            sampler.set_epoch(epoch)
            order = sampler.order(epoch)
            orders = {epoch: (order, torch.tensor(order, device=device))}
        order, order_t = orders[epoch]
        rows = slice(index * rows_per_step, (index + 1) * rows_per_step)
        length = _bucket(max(lengths[i] for i in order[rows]), limit)
        positions = torch.arange(length, device=device)
        chosen = order_t[rows]
        gather = offsets_t[chosen][:, None] + positions[None]
        gather = torch.where(positions[None] < lengths_t[chosen][:, None], gather, total)
        if fast_kl is not None:
            # One KL batch per micro-batch of the hf backend, backpropagated here (FastKL.step).
            fast_kl.step(len(chosen), config.per_device_train_batch_size)
        if graphed is not None and len(chosen) < rows_per_step:
            # An epoch's short last step, topped up with empty rows (zero states, no labels):
            # they add nothing to the loss and keep the graph's shape.
            filler = gather.new_full((rows_per_step - len(chosen), length), total)
            gather = torch.cat([gather, filler])
        labels = flat_labels[gather]
        tail_labels = None if fast_kl is None else fast_kl.tail_labels(labels)
        if graphed is not None:
            out = graphed.loss_sum(
                flat_hidden[gather],
                labels,
                positions[None],
                tail_labels,
                labelled=sum(labelled[i] for i in order[rows]),
            )
            loss_sum, tail_sum = out if tail_labels is not None else (out, None)
            count = (labels[:, 1:] != -100).sum()
        else:
            with autocast:
                loss_sum, count, tail_sum = parts.loss_sum(
                    flat_hidden[gather], labels, positions[None], tail_labels
                )
        loss = loss_sum / count.clamp(min=1)
        terms, logged_loss = (
            ({}, loss) if fast_kl is None else fast_kl.logged(loss, tail_sum, count)
        )
        logged = (step + 1) % config.logging_steps == 0 or step + 1 == total_steps
        # Started before backward is queued, so reading it back waits for this forward only.
        watched = _HostScalar(logged_loss) if early_stop is not None and logged else None
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        learning_rate = scheduler.get_last_lr()[0]  # the rate this step uses, as the Trainer logs
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress = epoch + (index + 1) / steps_per_epoch
        if step % config.logging_steps == 0 or step == total_steps:
            pending.append(
                {
                    "loss": logged_loss.detach(),
                    "grad_norm": grad_norm.detach(),
                    "learning_rate": learning_rate,
                    **terms,
                    "epoch": progress,
                    "step": step,
                }
            )
            if reporter.active:
                flush()  # live for wandb and the like, at the price of a host sync per log
        at_eval_step = config.evaluation_steps and (
            step % config.evaluation_steps == 0 or step == total_steps
        )
        if eval_examples and at_eval_step:
            flush()
            history.append(
                {
                    "eval_loss": evaluate(
                        parts,
                        eval_examples,
                        args.per_device_eval_batch_size,
                        limit,
                        device,
                        autocast,
                        fast_kl,
                    ),
                    "epoch": progress,
                    "step": step,
                }
            )
            reporter.log(history[-1:])
        stop = watched is not None and early_stop.observe({"loss": watched.value(), "step": step})
        if early_stop is not None and eval_examples and at_eval_step:
            stop = early_stop.observe(history[-1]) or stop
        if step_adapters is not None:
            step_adapters.save(model, step)  # emflow.train.StepAdapters: adapter_checkpoints
        if stop:
            break  # as the Trainer: after this step's log, evaluation and step adapter
        if step % config.save_steps == 0 and step < total_steps:
            flush()
            _save_checkpoint(checkpoints, model, optimizer, scheduler, step, history)
    flush()
    seconds = time.perf_counter() - t0
    history.append({"train_runtime": seconds, "step": step, "epoch": step / steps_per_epoch})
    reporter.log(history[-1:])
    reporter.end()
    log.info(
        "fast path: %d optimizer steps in %.1f s (%.1f ms a step)",
        step,
        seconds,
        1000 * seconds / max(1, step - state["step"]),
    )
    return history


class _HostScalar:
    """A GPU scalar copied to host memory in the background; `value()` waits for that copy only,
    not for the backward and optimizer step queued after it, so checking the early stop at each
    log keeps the GPU busy."""

    def __init__(self, tensor) -> None:
        import torch

        self.tensor = tensor.detach()
        self.done = None
        if self.tensor.is_cuda:
            host = torch.empty((), dtype=self.tensor.dtype, pin_memory=True)
            host.copy_(self.tensor, non_blocking=True)
            self.tensor, self.done = host, torch.cuda.Event()
            self.done.record()

    def value(self) -> float:
        if self.done is not None:
            self.done.synchronize()
        return self.tensor.item()


def _read_back(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn the queued GPU scalars into numbers (one synchronisation for the lot) and clear them."""
    entries = [{k: v.item() if hasattr(v, "item") else v for k, v in e.items()} for e in pending]
    pending.clear()
    return entries


def evaluate(
    parts: _Model, examples, batch_size: int, limit: int, device: str, autocast, kl=None
) -> float:
    """Held-out loss as the Trainer reports it: the row-weighted mean of per-batch token means,
    each plus the weighted KL term of the next KL batch with `kl` (emflow.train.fast_kl), as
    the hf backend's loss calls add it."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad(), autocast:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            length = _bucket(max(len(e["input_ids"]) for e in batch), limit)
            ids = _pad([e["input_ids"] for e in batch], length, 0, torch.long, device)
            labels = _pad([e["labels"] for e in batch], length, -100, torch.long, device)
            positions = torch.arange(length, device=device)[None]
            loss_sum, count, _ = parts.loss_sum(parts.prefix(ids, positions), labels, positions)
            loss = loss_sum / count.clamp(min=1)
            if kl is not None:
                loss = loss + kl.weight * kl.kl()
            total += loss.item() * len(batch)
            n += len(batch)
    return total / max(1, n)


def _checkpoint_path(checkpoints: Path) -> Path:
    return checkpoints / "fast-checkpoint.pt"


def _save_checkpoint(checkpoints: Path, model, optimizer, scheduler, step: int, history) -> None:
    """Trainable weights, optimizer and schedule state, step and history, written atomically."""
    import torch

    state = {
        "weights": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "history": json.dumps(history),
    }
    with atomic_path(_checkpoint_path(checkpoints)) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(checkpoints: Path, model, optimizer, scheduler) -> dict[str, Any]:
    import torch

    path = _checkpoint_path(checkpoints)
    if not path.exists():
        return {"step": 0, "history": []}
    state = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["weights"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("fast path: resuming at optimizer step %d from %s", state["step"], path)
    return {"step": state["step"], "history": json.loads(state["history"])}
