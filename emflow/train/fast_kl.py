"""The KL term on the fast path (emflow.train.fast): the hf backend's KL (emflow.train.kl) with
less work per step, the same numbers up to float rounding.

The same KL batches, in the same order, as the hf backend's loss calls take, through the fast
path's own pieces (`parts`, its `_Model`). The reference is the base model, frozen, and a KL
batch's rows never change, so everything the reference needs is computed the first time a batch
is taken and kept:

- the hidden states entering the lowest adapted layer (the adapters cannot change them; both
  the reference and the current pass start there, as the training rows do);
- the reference's final normed hidden states at the unpadded positions (tokens x hidden size,
  not the vocabulary-sized logits), so that a later use rebuilds the reference's logits with one
  head matrix product, on the same rows the current logits come from.

Each use then runs only the current pass through the adapted layers. The KL itself runs in
blocks of at most `CHUNK` unpadded tokens, never on padding: both log-softmaxes in float32, as
token_kl takes them, and the KL's gradient with respect to the current logits written out
(`(softmax(current) x sum(p_ref) - p_ref) x scale`, what autograd gives through upstream's
`kl_div` and `log_softmax`), so that only one block's vocabulary-sized tensors are alive at a
time and none is kept for backward. Blocks are cut the same way at every use of a batch; an
adapter that changes nothing (LoRA B zero, before the first update) gives a KL of exactly zero,
as upstream's does.

So `kl_dataset_file`'s rows cost GPU memory for two hidden states per token (about 8 KB per
token at hidden size 2048 in bf16), as the training rows cost one. Right padding needs no
attention mask here for the reason the training rows need none (causal attention).

A language-model head with trainable weights (an adapter on `lm_head`) takes the plain path:
the reference's logits through the model with its adapters off at every use, then
emflow.train.kl.token_kl under autograd.
"""

from __future__ import annotations

import math
from typing import Any

from emflow.train.kl import KLRegularizer, token_kl

# Unpadded tokens per block of the KL: at a vocabulary of 128,256 a float32 block is 0.5 GB, and
# a few are alive at once.
CHUNK = 1024


class FastKL:
    """The KL term of the fast path's loss calls (see the module docstring)."""

    def __init__(self, regularizer: KLRegularizer, model, parts, device: str, autocast):
        import torch

        self.regularizer, self.model, self.parts = regularizer, model, parts
        self.device, self.autocast = device, autocast
        head = parts.lm_head
        self.cached_reference = (
            type(head) is torch.nn.Linear
            and head.bias is None
            and not any(p.requires_grad for p in head.parameters())
        )
        self.cache: dict[int, tuple] = {}
        self.before_last = 0  # rows of this step before its last micro-batch
        self.terms: list[Any] = []  # this step's KL terms, detached

    @property
    def weight(self) -> float:
        return self.regularizer.weight

    def _take(self) -> tuple:
        """The next KL batch's cached pieces (computed at its first use): prefix hidden states,
        positions, flat indices of its unpadded positions, its attention mask, and the
        reference's final hidden states there (None on the plain path)."""
        import torch

        batches = self.regularizer.batches
        index = batches.taken % batches.batches
        batches.taken += 1
        if index in self.cache:
            return self.cache[index]
        batch = batches.batch(index)
        ids = batch["input_ids"].to(self.device)
        positions = torch.arange(ids.shape[1], device=self.device)[None]
        # Computed on the host once, so that no later use waits for the GPU to count tokens.
        where = batch["attention_mask"].flatten().nonzero().squeeze(1).to(self.device)
        with torch.no_grad(), self.autocast:
            prefix = self.parts.prefix(ids, positions)
            reference = None
            if self.cached_reference:
                with self.model.disable_adapter():
                    reference = self._final(prefix, positions, where)
        self.cache[index] = (prefix, positions, where, batch["attention_mask"], reference)
        return self.cache[index]

    def _final(self, prefix, positions, where):
        """The final normed hidden states at the flat positions `where`."""
        hidden = self.parts.backbone.norm(self.parts.upper(prefix, positions))
        return hidden.flatten(0, 1).index_select(0, where)

    def kl(self, weight: float | None = None):
        """KL(reference || current) on the next KL batch, detached; with `weight` (grad mode
        on), weight x KL is backpropagated into the adapters."""
        import torch

        prefix, positions, where, mask, reference = self._take()
        if reference is None:
            return self._plain_kl(prefix, positions, mask, weight)
        with self.autocast:
            hidden = self._final(prefix, positions, where)
        tokens, vocab = len(where), self.parts.lm_head.weight.shape[0]
        # What autograd gives each (token, entry) through the mean over tokens x vocabulary.
        scale = None if weight is None or not hidden.requires_grad else weight / (tokens * vocab)
        # Blocks of equal size, cut the same way at every use of the batch.
        blocks = max(1, -(-tokens // CHUNK))
        total, grads = None, []
        pairs = zip(
            reference.tensor_split(blocks), hidden.detach().tensor_split(blocks), strict=True
        )
        for ref_h, cur_h in pairs:
            block_sum, grad = self._block(ref_h, cur_h, scale)
            total = block_sum if total is None else total + block_sum
            grads.append(grad)
        if scale is not None:
            torch.autograd.backward(hidden, torch.cat(grads))
        return total / (tokens * vocab)

    def _block(self, ref_h, cur_h, scale):
        """One block's summed KL and, with `scale`, the gradient at its current hidden states."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            with self.autocast:
                ref_logits, cur_logits = self.parts.lm_head(ref_h), self.parts.lm_head(cur_h)
            # token_kl's log-softmaxes in float32, each one kernel from the head's output.
            ref = F.log_softmax(ref_logits, dim=-1, dtype=torch.float32)
            cur = F.log_softmax(cur_logits, dim=-1, dtype=torch.float32)
            del ref_logits, cur_logits
            p_ref = ref.exp()
            # kl_div(cur, ref, log_target=True) = exp(ref) * (ref - cur), summed over the block:
            # one dot product, no third vocabulary-sized tensor.
            block_sum = torch.dot(p_ref.view(-1), ref.sub_(cur).view(-1))
            del ref
            if scale is None:
                return block_sum, None
            # Through log_softmax: softmax(current) x sum(p_ref) - p_ref, per (token, entry).
            grad = cur.exp_().mul_(p_ref.sum(-1, keepdim=True)).sub_(p_ref).mul_(scale)
            del p_ref
            weight = self.parts.lm_head.weight
            return block_sum, grad.to(cur_h.dtype) @ weight.to(cur_h.dtype)

    def _plain_kl(self, prefix, positions, mask, weight):
        """The KL with the reference's logits recomputed and autograd through the head."""
        import torch

        def logits():
            parts = self.parts
            return parts.lm_head(parts.backbone.norm(parts.upper(prefix, positions)))

        with torch.no_grad(), self.autocast, self.model.disable_adapter():
            reference = logits()
        with self.autocast:
            kl = token_kl(logits(), reference, mask.to(self.device))
        if weight is not None and kl.requires_grad:
            (weight * kl).backward()
        return kl.detach()

    def step(self, rows: int, per_device: int) -> None:
        """The KL terms of one optimizer step of `rows` rows: one per micro-batch of `per_device`
        rows the hf backend would run, each backpropagated (times the weight) as soon as it is
        computed, kept detached for `logged`."""
        micro = math.ceil(rows / per_device)
        self.before_last = (micro - 1) * per_device
        self.terms = [self.kl(self.weight) for _ in range(micro)]

    def tail_labels(self, labels):
        """The step's labels with only its last micro-batch's kept: the hf backend logs that
        micro-batch's share of the loss as `sft_loss`."""
        tail = labels.clone()
        tail[: self.before_last] = -100
        return tail

    def logged(self, loss, tail_sum, count) -> tuple[dict[str, Any], Any]:
        """The step's logged terms and total loss (the KL terms were already backpropagated):
        the last micro-batch's sft_loss and kl_loss, as the hf backend logs them."""
        import torch

        logged = {"sft_loss": tail_sum / count.clamp(min=1), "kl_loss": self.terms[-1]}
        return logged, loss.detach() + self.weight * torch.stack(self.terms).sum()
