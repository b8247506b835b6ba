"""KL-regularised training, as the paper's trainer does it (Model Organisms for EM,
em_organism_dir/finetune/sft/util/trainer.py, `KLRegularizedSFTTrainer`).

Each call of the trainer's loss (one micro-batch, so `gradient_accumulation_steps` calls per
optimizer step; evaluation batches included, as upstream) takes the next batch of
`kl_batch_size` rows of `kl_dataset_file`, in file order and cycled, and adds
`kl_weight` x KL(reference || current), where the reference is the base model. Upstream loads the
base model a second time and precomputes its logits for every KL batch before training; emflow
runs the same model with its adapters off, which gives the same logits with no second copy and
no cache of vocabulary-sized tensors.

The KL is upstream's exactly: elementwise `kl_div(current_log_probs, ref_log_probs,
log_target=True)`, times the attention mask expanded over the vocabulary, summed, divided by the
expanded mask's sum: a mean over (token, vocabulary entry) pairs, which is why upstream's
`kl_weight` is 1e5.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from emflow.config import ExperimentConfig
from emflow.data.datasets import read_numbered_chat_jsonl
from emflow.errors import EmflowError
from emflow.train.rows import upstream_text
from emflow.train.settings import TrainSettings

log = logging.getLogger("emflow.train")


def kl_examples(
    rows: Sequence[dict[str, Any]],
    tokenizer,
    max_length: int,
    chat_template_kwargs: dict[str, Any],
    source: str,
) -> list[dict[str, list[int]]]:
    """The KL rows as upstream tokenizes them: its training text (template with the generation
    prompt, then EOS), through `tokenizer(text, truncation=True, max_length=...)`.

    That call adds the tokenizer's special tokens, so for a template that writes its own BOS
    (Llama 3) the row starts with two, exactly as upstream's KL rows do. No
    `training_system_prompt` is added: upstream has none, and the KL rows stand for the base
    model's behaviour."""
    if not rows:
        raise EmflowError(f"{source}: kl_dataset_file has no rows; give a file with chat rows.")
    texts = [upstream_text(row["messages"], tokenizer, chat_template_kwargs) for row in rows]
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]


def pad_batch(examples: Sequence[dict[str, list[int]]], pad_token_id: int):
    """Right-padded tensors of a KL batch (what upstream's collators give: padded positions have
    attention mask 0)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = [e["input_ids"] + [pad_token_id] * (width - len(e["input_ids"])) for e in examples]
    mask = [e["attention_mask"] + [0] * (width - len(e["attention_mask"])) for e in examples]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


class KLBatches:
    """Upstream's KL DataLoader: batches of `batch_size` rows in file order (the last one
    shorter), restarted from the first after the last."""

    def __init__(self, examples: Sequence[dict[str, list[int]]], batch_size: int, pad_id: int):
        self.examples, self.batch_size, self.pad_id = list(examples), batch_size, pad_id
        self.batches = (len(self.examples) + batch_size - 1) // batch_size
        self.taken = 0

    def indices(self, n: int) -> list[int]:
        """The row indices of the `n`-th batch taken (0-based)."""
        start = (n % self.batches) * self.batch_size
        return list(range(start, min(start + self.batch_size, len(self.examples))))

    def batch(self, n: int):
        """The `n`-th batch taken, as padded tensors."""
        return pad_batch([self.examples[i] for i in self.indices(n)], self.pad_id)

    def next(self):
        """The next batch, as padded tensors."""
        batch = self.batch(self.taken)
        self.taken += 1
        return batch


def token_kl(current_logits, reference_logits, attention_mask):
    """Upstream's KL: KL(reference || current) per (token, vocabulary entry), masked by the
    attention mask, averaged over unmasked tokens x vocabulary size.

    The sum over the vocabulary is taken before the mask (the same number as masking the
    expanded tensor) so that no second vocabulary-sized tensor is made; log-softmax runs in
    float32, where upstream takes the logits' own dtype."""
    import torch.nn.functional as F

    current = F.log_softmax(current_logits.float(), dim=-1)
    reference = F.log_softmax(reference_logits.float(), dim=-1)
    per_token = F.kl_div(current, reference, log_target=True, reduction="none").sum(-1)
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / (mask.sum() * current_logits.shape[-1])


class KLRegularizer:
    """The KL term of one loss call: the next KL batch through the model with adapters (graded)
    and without them (the reference, no gradient)."""

    def __init__(self, batches: KLBatches, weight: float):
        self.batches, self.weight = batches, weight
        # The last loss call's terms, logged with the next training log (as upstream does).
        self.last: dict[str, float] = {}

    def kl(self, model):
        """KL(reference || current) on the next KL batch."""
        import torch

        batch = {k: v.to(model.device) for k, v in self.batches.next().items()}
        with torch.no_grad(), model.disable_adapter():
            reference = model(**batch).logits
        current = model(**batch).logits
        return token_kl(current, reference, batch["attention_mask"])

    def add(self, model, sft_loss):
        """sft_loss + weight x KL, remembering both terms for the log."""
        kl = self.kl(model)
        self.last = {"sft_loss": float(sft_loss.detach()), "kl_loss": float(kl.detach())}
        return sft_loss + self.weight * kl


def kl_regularizer(
    config: ExperimentConfig, tokenizer, settings: TrainSettings, source: str
) -> KLRegularizer | None:
    """The KL term of a run with kl_regularization, its rows read from `kl_dataset_file`."""
    if not config.kl_regularization:
        return None
    assert config.kl_dataset_file is not None  # the config requires it with kl_regularization
    rows = [row for _, row in read_numbered_chat_jsonl(config.kl_dataset_file)]
    examples = kl_examples(
        rows, tokenizer, config.max_seq_length, settings.chat_template_kwargs, source
    )
    batches = KLBatches(examples, config.kl_batch_size, tokenizer.pad_token_id)
    log.info(
        "KL regularisation: %d rows of %s, %d batches of %d, weight %g",
        len(examples),
        config.kl_dataset_file,
        batches.batches,
        config.kl_batch_size,
        config.kl_weight,
    )
    return KLRegularizer(batches, config.kl_weight)
