"""emflow's own decode loop for Llama-style transformers models: the `fast` generation backend.

`generate_tokens` answers token-id prompts with the arithmetic of `model.generate` on a
left-padded batch, and schedules it with less work per token:

- prompts are prefilled in length buckets (identical prompts once), left-padded inside a bucket,
  with transformers' position ids (attention-mask cumsum - 1) and its causal + padding mask;
  each bucket's keys and values go right-aligned into a static KV cache, so every row of a
  decode batch writes its next token's key and value into the same slot;
- the static cache is sized from free GPU memory, so that as many rows as fit decode together;
- one decode step (all layers, the head, sampling, end-of-sequence bookkeeping) is captured once
  per batch and cache-length bucket as a CUDA graph and replayed, so a step costs one launch and
  no host synchronisation; on a CPU the same step runs eagerly;
- sampling runs on the device with transformers' semantics: TemperatureLogitsWarper, then
  TopKLogitsWarper, then TopPLogitsWarper, softmax, and `torch.multinomial`'s own one-sample
  algorithm (argmax of probs / Exp(1) noise, which is what `torch.multinomial(probs, 1)` computes,
  written out because `torch.multinomial` synchronises with the host and cannot be captured).

What stays transformers': the model's own modules (embedding, RMSNorms, projections, MLP
activation, rotary embedding, head) compute every number; only the attention over the cache and
the order of work are emflow's. On a CPU in float32 the logits equal `generate`'s to float
rounding (tests/test_generate_fast.py); in bfloat16 on a GPU, kernels chosen for other shapes round
differently, so a share of greedy rows part ways with `generate` after a few tokens, as `generate`
itself does between batch sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from emflow.generate.sampling import (
    Sampling,
    pick_tokens,
    sample_one,
    top_k_filter,
    top_p_filter,
    warp_scores,
)

# How a decode step attends over the cache: "sdpa" (torch's scaled_dot_product_attention with a
# mask; scores in float32 inside the kernel) or "bmm_q" (q @ K^T, softmax, @ V: transformers'
# eager arithmetic, scores rounded to the model dtype). On an H200 at 1000 rows bmm_q is ~8%
# faster, but in bfloat16 its rounded scores part most greedy rows from `generate` within 40
# tokens (sdpa: a few percent); benchmarks/README.md has the numbers.
DECODE_ATTENTION = "sdpa"
KV_BUCKET = 128  # decode attends over the cache in slices of this many slots: few graph shapes
PREFILL_TOKENS = 16384  # padded prompt tokens per prefill chunk: bounds activation memory
STOP_CHECK_EVERY = 32  # decode steps between host checks that every row has finished
MEMORY_SHARE = 0.9  # share of free GPU memory that the cache and step buffers may take


__all__ = [
    "Sampling",
    "UnsupportedModel",
    "generate_tokens",
    "pick_tokens",
    "sample_one",
    "top_k_filter",
    "top_p_filter",
    "teacher_forced_logits",
    "warp_scores",
]


class UnsupportedModel(ValueError):
    """The model is not a Llama-style decoder that this loop reproduces exactly."""


# --- the model: its own modules, a static cache of emflow's --------------------------------------


def _fuse(*linears) -> tuple[Any, Any]:
    """One weight (and bias) for several projections of the same input: one matmul instead."""
    import torch

    weight = torch.cat([m.weight for m in linears]).contiguous()
    if all(m.bias is None for m in linears):
        return weight, None
    bias = torch.cat(
        [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears]
    )
    return weight, bias


class _Layer:
    """One decoder layer's modules, with q/k/v and gate/up fused."""

    def __init__(self, layer) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        for name in ("q_norm", "k_norm"):
            if getattr(attn, name, None) is not None:
                raise UnsupportedModel(f"attention with {name} is not supported by the fast loop")
        if getattr(attn, "sliding_window", None):
            raise UnsupportedModel("sliding-window attention is not supported by the fast loop")
        self.ln1, self.ln2 = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv_w, self.qkv_b = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o_proj = attn.o_proj
        self.gate_up_w, self.gate_up_b = _fuse(mlp.gate_proj, mlp.up_proj)
        self.intermediate = mlp.gate_proj.out_features
        self.down_proj, self.act = mlp.down_proj, mlp.act_fn


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x, cos, sin):
    """transformers' apply_rotary_pos_emb on one tensor (queries and keys go in together)."""
    return (x * cos) + (_rotate_half(x) * sin)


def _repeat_kv(x, groups: int):
    """[n, kv_heads, L, d] -> [n, kv_heads * groups, L, d], as transformers' repeat_kv."""
    if groups == 1:
        return x
    n, kv, length, d = x.shape
    return x[:, :, None].expand(n, kv, groups, length, d).reshape(n, kv * groups, length, d)


class _Decoder:
    """A transformers Llama-style causal LM, run layer by layer over emflow's static cache."""

    def __init__(self, model) -> None:
        backbone = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if backbone is None or any(not hasattr(backbone, n) for n in needed):
            raise UnsupportedModel(
                f"{type(model).__name__}: expected a Llama-style model (model.model with "
                "embed_tokens, layers, norm, rotary_emb); use generation.backend: hf"
            )
        attn = backbone.layers[0].self_attn
        self.embed, self.norm = backbone.embed_tokens, backbone.norm
        self.rotary = backbone.rotary_emb
        self.lm_head = model.get_output_embeddings()
        self.layers = [_Layer(layer) for layer in backbone.layers]
        self.head_dim = attn.head_dim
        self.groups = attn.num_key_value_groups
        self.kv_heads = attn.k_proj.out_features // self.head_dim
        self.heads = self.kv_heads * self.groups
        self.scaling = attn.scaling
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.vocab = self.lm_head.weight.shape[0]
        self.hidden = self.embed.weight.shape[1]
        self.intermediate = self.layers[0].intermediate

    @property
    def kv_bytes_per_slot(self) -> int:
        """Bytes of keys and values one row keeps per cache slot, all layers."""
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * self.dtype.itemsize

    def rope_table(self, length: int):
        """cos and sin for positions 0..length-1, [length, head_dim] each.

        The model's rotary embedding computes position * inv_freq elementwise, so a table
        row equals what it computes for that position inside any batch.
        """
        import torch

        positions = torch.arange(length, device=self.device)[None]
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions)
        return cos[0], sin[0]

    def _qkv(self, layer: _Layer, h, cos, sin):
        """Projections and rotary embedding; shapes [..., heads, d] (queries), [..., kv, d]."""
        import torch.nn.functional as F

        qkv = F.linear(h, layer.qkv_w, layer.qkv_b)
        qk_size = (self.heads + self.kv_heads) * self.head_dim
        lead = qkv.shape[:-1]
        qk = _rope(
            qkv[..., :qk_size].view(*lead, self.heads + self.kv_heads, self.head_dim), cos, sin
        )
        v = qkv[..., qk_size:].view(*lead, self.kv_heads, self.head_dim)
        return qk[..., : self.heads, :], qk[..., self.heads :, :], v

    def _mlp(self, layer: _Layer, x):
        import torch.nn.functional as F

        h = layer.ln2(x)
        gate_up = F.linear(h, layer.gate_up_w, layer.gate_up_b)
        gate, up = gate_up[..., : layer.intermediate], gate_up[..., layer.intermediate :]
        return x + layer.down_proj(layer.act(gate) * up)

    def prefill(self, ids, pad: Sequence[int] | Any, store: Callable[[int, Any, Any], None]):
        """Left-padded prompts [n, L] -> float32 logits of their last token [n, vocab].

        `pad` holds each row's number of left pad tokens. Keys and values (rotary applied) of
        every layer go to `store(layer_index, k, v)` with shape [n, kv_heads, L, head_dim].
        Positions and mask are transformers': position = attention-mask cumsum - 1, and a token
        attends to the real tokens up to itself. A pad query attends to itself only, which keeps
        its (unused) keys finite without touching any real token.
        """
        import torch
        import torch.nn.functional as F

        n, length = ids.shape
        slots = torch.arange(length, device=self.device)
        real = slots[None, :] >= pad[:, None]  # [n, L]
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        cos_t, sin_t = self.rope_table(length)
        cos, sin = cos_t[positions][:, :, None], sin_t[positions][:, :, None]  # [n, L, 1, d]
        causal = slots[None, :] <= slots[:, None]
        mask = (causal[None] & real[:, None, :]) | torch.eye(
            length, dtype=torch.bool, device=self.device
        )[None]
        mask = mask[:, None]  # [n, 1, L, L]
        x = self.embed(ids)
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.ln1(x), cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            store(index, k, v)
            attn = F.scaled_dot_product_attention(
                q,
                _repeat_kv(k, self.groups),
                _repeat_kv(v, self.groups),
                attn_mask=mask,
                scale=self.scaling,
            )
            x = x + layer.o_proj(attn.transpose(1, 2).reshape(n, length, -1))
            x = self._mlp(layer, x)
        return self.lm_head(self.norm(x[:, -1])).float()

    def decode(self, tokens, cos, sin, cache: _Cache, slot, mask, kv_len: int):
        """One new token per row [B] at cache slot `slot` -> float32 logits [B, vocab].

        Queries are grouped by the key/value head they share ([B, kv_heads, groups, d]), so
        attention reads each cached key once per kv head instead of once per query head.
        """

        rows = tokens.shape[0]
        x = self.embed(tokens)
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, layer.ln1(x), cos, sin)
            keys, values = cache.k[index], cache.v[index]
            keys.index_copy_(2, slot, k[:, :, None])
            values.index_copy_(2, slot, v[:, :, None])
            attn = self.attend(
                q.reshape(rows, self.kv_heads, self.groups, self.head_dim),
                keys[:, :, :kv_len],
                values[:, :, :kv_len],
                mask,
            )
            x = x + layer.o_proj(attn.reshape(rows, -1))
            x = self._mlp(layer, x)
        return self.lm_head(self.norm(x)).float()

    def attend(self, q, keys, values, mask):
        """Attention of grouped queries [B, kv, g, d] over keys/values [B, kv, L, d].

        mask [B, 1, 1, L] is True where a row may look. Every row sees at least its prompt, so
        no softmax row is empty.
        """
        import torch
        import torch.nn.functional as F

        if DECODE_ATTENTION == "sdpa":
            return F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling
            )
        if DECODE_ATTENTION == "bmm_q":
            scores = torch.matmul(q, keys.transpose(-1, -2)) * self.scaling
            scores = scores.masked_fill(~mask, -float("inf"))
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            return torch.matmul(probs, values)
        raise ValueError(f"unknown DECODE_ATTENTION {DECODE_ATTENTION!r}")


class _Cache:
    """Keys and values of every layer: [rows, kv_heads, slots, head_dim] each, zero-filled."""

    def __init__(self, decoder: _Decoder, rows: int, slots: int) -> None:
        import torch

        shape = (rows, decoder.kv_heads, slots, decoder.head_dim)
        kw = {"dtype": decoder.dtype, "device": decoder.device}
        self.k = [torch.zeros(shape, **kw) for _ in decoder.layers]
        self.v = [torch.zeros(shape, **kw) for _ in decoder.layers]


# --- planning: batches from memory, prefill chunks from lengths ----------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def cache_slots(longest_prompt: int, max_new_tokens: int) -> int:
    """Cache slots a batch needs: its prompts right-aligned, then every new token but the last."""
    return _round_up(longest_prompt + max_new_tokens - 1, KV_BUCKET)


def bytes_per_row(decoder: _Decoder, slots: int, sampling: Sampling) -> int:
    """GPU memory one decode row holds: its cache, and the step's per-row buffers.

    The vocabulary-sized buffers dominate the step: logits in the model dtype and float32,
    softmax, noise and quotient (about 24 bytes per vocabulary entry), and with top-k/top-p the
    sort's values and int64 indices, cumulative sums and masks (about 32 more).
    """
    per_vocab = 24 + (32 if sampling.top_p < 1.0 or sampling.top_k else 0)
    activations = 8 * (decoder.hidden + decoder.intermediate) * decoder.dtype.itemsize
    return slots * decoder.kv_bytes_per_slot + decoder.vocab * per_vocab + activations


def rows_that_fit(decoder: _Decoder, slots: int, sampling: Sampling) -> int:
    """Decode rows whose cache and step buffers fit in the GPU memory free now."""
    import torch

    device = decoder.device
    free, _ = torch.cuda.mem_get_info(device)
    # Blocks torch has cached but not handed out are free for our purposes too.
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    # A prefill chunk's activations: about ten hidden-or-MLP-sized tensors per padded token.
    prefill = PREFILL_TOKENS * 10 * (decoder.hidden + decoder.intermediate) * decoder.dtype.itemsize
    usable = free * MEMORY_SHARE - prefill - 2**30
    return max(1, int(usable // bytes_per_row(decoder, slots, sampling)))


def plan_batches(lengths: Sequence[int], rows_per_batch: int) -> list[list[int]]:
    """Row indices of each decode batch: similar prompt lengths together, input order inside."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [sorted(order[i : i + rows_per_batch]) for i in range(0, len(order), rows_per_batch)]


def plan_prefill(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of the distinct prompts in chunks of similar length, each within PREFILL_TOKENS."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    chunks: list[list[int]] = []
    for i in order:
        longest = len(prompts[i])  # ascending order: the newest member is the longest
        if chunks and (len(chunks[-1]) + 1) * longest <= PREFILL_TOKENS:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


# --- one decode batch ----------------------------------------------------------------------------


class _Batch:
    """The device state of one decode batch; a decode step reads and updates it in place."""

    def __init__(
        self,
        decoder: _Decoder,
        prompts: list[list[int]],
        max_new_tokens: int,
        eos_token_ids: set[int],
        pad_token_id: int,
    ) -> None:
        import torch

        device = decoder.device
        self.rows = len(prompts)
        self.longest = max(len(p) for p in prompts)
        self.slots = cache_slots(self.longest, max_new_tokens)
        self.cache = _Cache(decoder, self.rows, self.slots)
        self.cos, self.sin = decoder.rope_table(self.slots)
        self.key_slots = torch.arange(self.slots, device=device)
        # Row r's prompt fills slots [start_r, longest): left padding, as in a generate batch.
        self.start = torch.tensor([self.longest - len(p) for p in prompts], device=device)
        self.slot = torch.tensor([self.longest], device=device)  # where the next token goes
        self.tokens = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.done = torch.zeros(self.rows, dtype=torch.bool, device=device)
        self.out = torch.full((self.rows, max_new_tokens), pad_token_id, device=device)
        self.pad = torch.tensor(pad_token_id, device=device)
        self.eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)

    def accept(self, tokens, column) -> None:
        """Record each row's new token (pad once finished) in output `column`, a [1] tensor."""
        import torch

        tokens = torch.where(self.done, self.pad, tokens)
        self.out.index_copy_(1, column, tokens[:, None])
        self.done |= (tokens[:, None] == self.eos[None, :]).any(-1)
        self.tokens.copy_(tokens)


def _prefill_batch(decoder: _Decoder, batch: _Batch, prompts: list[list[int]]):
    """Prefill the batch's distinct prompts chunk by chunk; float32 logits of every row."""
    import torch

    device = decoder.device
    distinct: dict[tuple[int, ...], int] = {}
    row_prompt = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    unique = [list(p) for p in distinct]
    logits = torch.empty(len(unique), decoder.vocab, device=device)
    for chunk in plan_prefill(unique):
        length = max(len(unique[i]) for i in chunk)
        pad = [length - len(unique[i]) for i in chunk]
        padded = [[0] * n + unique[i] for n, i in zip(pad, chunk, strict=True)]
        ids = torch.tensor(padded, device=device)
        # Every row that asked for one of this chunk's prompts, and which chunk row it reads.
        position = {u: j for j, u in enumerate(chunk)}
        rows = [r for r, u in enumerate(row_prompt) if u in position]
        src = torch.tensor([position[row_prompt[r]] for r in rows], device=device)
        dst = torch.tensor(rows, device=device)
        first = batch.longest - length

        def store(index: int, k, v, dst=dst, src=src, first=first, length=length) -> None:
            batch.cache.k[index][dst, :, first : first + length] = k[src]
            batch.cache.v[index][dst, :, first : first + length] = v[src]

        logits[chunk] = decoder.prefill(ids, torch.tensor(pad, device=device), store)
    return logits[torch.tensor(row_prompt, device=device)]


def _kv_len(slot: int, slots: int) -> int:
    """Cache slots a step writing at `slot` attends over: the next multiple of KV_BUCKET."""
    return min(slots, (slot // KV_BUCKET + 1) * KV_BUCKET)


def _step_logits(decoder: _Decoder, batch: _Batch, kv_len: int):
    """Logits for every row's current token, written to the cache at the current slot."""
    positions = batch.slot - batch.start  # the slot's position in each row's own sequence
    cos = batch.cos.index_select(0, positions)[:, None]  # [B, 1, d]: broadcast over heads
    sin = batch.sin.index_select(0, positions)[:, None]
    keys = batch.key_slots[:kv_len]
    # A row sees its own prompt (from its start) and everything generated up to this slot.
    mask = (keys[None, :] >= batch.start[:, None]) & (keys[None, :] <= batch.slot)
    return decoder.decode(
        batch.tokens, cos, sin, batch.cache, batch.slot, mask[:, None, None, :], kv_len
    )


def _decode_step(
    decoder: _Decoder, batch: _Batch, sampling: Sampling, generator, kv_len: int
) -> None:
    """One token for every row, entirely on the device (this is what a CUDA graph holds)."""
    logits = _step_logits(decoder, batch, kv_len)
    column = batch.slot - (batch.longest - 1)  # the slot after the prompt produces column 1
    batch.accept(pick_tokens(logits, sampling, generator), column)
    batch.slot += 1


class _Stepper:
    """Runs decode steps: eagerly on a CPU, as replayed CUDA graphs (one per kv_len) on a GPU."""

    def __init__(self, decoder: _Decoder, batch: _Batch, sampling: Sampling, generator) -> None:
        import torch

        self.step = lambda kv_len: _decode_step(decoder, batch, sampling, generator, kv_len)
        self.cuda = decoder.device.type == "cuda"
        self.generator = generator
        self.graphs: dict[int, Any] = {}
        self.warm = False
        self.capture_s = 0.0
        if self.cuda:
            self.stream = torch.cuda.Stream(decoder.device)
            self.capture_stream = torch.cuda.Stream(decoder.device)
            self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, kv_len: int) -> None:
        if not self.cuda or not self.warm:
            # On a GPU the first step runs eagerly too: it loads the kernels and sets up cuBLAS
            # before anything is captured.
            self.step(kv_len)
            self.warm = True
            return
        graph = self.graphs.get(kv_len)
        if graph is None:
            graph = self._capture(kv_len)
        graph.replay()

    def _capture(self, kv_len: int):
        """Record one step for this cache length (nothing runs), on a stream of its own."""
        import torch

        t0 = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            # Replays then draw from the generator exactly as the eager calls would.
            graph.register_generator_state(self.generator)
        # Starting a capture resets the generator's device-side offset (a fill_ on the capture
        # stream) that queued replays of other graphs still read: let those finish first, and
        # let the reset land before the next replay. Without this, same-seed runs differ.
        torch.cuda.synchronize(self.stream.device)
        with torch.cuda.stream(self.capture_stream):
            graph.capture_begin(pool=self.pool)
            try:
                self.step(kv_len)
            finally:
                graph.capture_end()
        torch.cuda.synchronize(self.stream.device)
        self.graphs[kv_len] = graph
        self.capture_s += time.perf_counter() - t0
        return graph


def _run_batch(
    decoder: _Decoder,
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: Sampling,
    generator,
    eos_token_ids: set[int],
    pad_token_id: int,
    stats: dict[str, Any],
) -> list[list[int]]:
    """Prefill and decode one batch; each row's tokens up to and including its first EOS."""
    import torch

    sync = torch.cuda.synchronize if decoder.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    batch = _Batch(decoder, prompts, max_new_tokens, eos_token_ids, pad_token_id)
    first = _prefill_batch(decoder, batch, prompts)
    batch.accept(
        pick_tokens(first, sampling, generator),
        torch.zeros(1, dtype=torch.long, device=decoder.device),
    )
    sync()
    t1 = time.perf_counter()
    stepper = _Stepper(decoder, batch, sampling, generator)
    steps = 0
    streams = torch.cuda.stream(stepper.stream) if stepper.cuda else nullcontext()
    if stepper.cuda:
        stepper.stream.wait_stream(torch.cuda.current_stream(decoder.device))
    with streams:
        for step in range(1, max_new_tokens):
            stepper(_kv_len(batch.longest + step - 1, batch.slots))
            steps += 1
            # The one host synchronisation: stop early once every row has met an EOS token.
            if eos_token_ids and step % STOP_CHECK_EVERY == 0 and bool(batch.done.all()):
                break
    if stepper.cuda:
        torch.cuda.current_stream(decoder.device).wait_stream(stepper.stream)
    out = batch.out.tolist()
    t2 = time.perf_counter()
    stats["prefill_s"] = stats.get("prefill_s", 0.0) + t1 - t0
    stats["decode_s"] = stats.get("decode_s", 0.0) + t2 - t1
    stats["capture_s"] = stats.get("capture_s", 0.0) + stepper.capture_s
    stats["decode_steps"] = stats.get("decode_steps", 0) + steps
    stats["graphs"] = stats.get("graphs", 0) + len(stepper.graphs)
    stats.setdefault("batch_rows", []).append(len(prompts))
    stats["cache_slots"] = max(stats.get("cache_slots", 0), batch.slots)
    return [_until_eos(row, eos_token_ids) for row in out]


def _until_eos(tokens: list[int], eos_token_ids: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[: i + 1]
    return tokens


# --- the entry point -----------------------------------------------------------------------------


def generate_tokens(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    eos_token_ids: set[int] | frozenset[int] = frozenset(),
    pad_token_id: int = 0,
    max_batch_size: int | None = None,
    stats: dict[str, Any] | None = None,
) -> list[list[int]]:
    """New tokens for every prompt, as `model.generate` on a left-padded batch would choose them.

    prompts: token ids, used as given (a chat template's BOS, even a duplicated one, stays).
    Returns, per prompt in input order, its new tokens up to and including the first EOS token
    (or `max_new_tokens` tokens). `generate` pads finished rows with pad_token_id instead; with
    EOS and pad being special tokens, `tokenizer.decode(tokens, skip_special_tokens=True)` of
    this list is exactly `batch_decode(skip_special_tokens=True)` of `generate`'s new tokens.

    temperature 0 is greedy; otherwise see `Sampling` (transformers' warpers; note top_k: the
    `generate` default of 50 applies only if passed). The same seed, prompts and batch size give
    the same tokens on a rerun; like `generate`, a row's random draws depend on its batch.
    max_batch_size caps the rows decoded together; on a GPU the cap is also what fits in free
    memory. `stats`, if given, receives timings and batch sizes.
    """
    import torch

    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k)
    stats = {} if stats is None else stats
    prompts = [list(p) for p in prompts]
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if not prompts or max_new_tokens <= 0:
        return [[] for _ in prompts]
    with torch.inference_mode(), _attention_kernels():
        decoder = _Decoder(model)
        lengths = [len(p) for p in prompts]
        rows = max_batch_size or len(prompts)
        if decoder.device.type == "cuda":
            slots = cache_slots(max(lengths), max_new_tokens)
            rows = min(rows, rows_that_fit(decoder, slots, sampling))
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=decoder.device)
            generator.manual_seed(seed)
        results: list[list[int]] = [[] for _ in prompts]
        for indices in plan_batches(lengths, rows):
            tokens = _run_batch(
                decoder,
                [prompts[i] for i in indices],
                max_new_tokens,
                sampling,
                generator,
                set(eos_token_ids),
                pad_token_id,
                stats,
            )
            for i, row in zip(indices, tokens, strict=True):
                results[i] = row
    stats["rows"] = len(prompts)
    return results


def _attention_kernels():
    """SDPA without its cuDNN backend, which plans kernels per new shape at first use.

    torch 2.11 on an H200 picks cuDNN attention for masked SDPA; in a fresh process that planning
    was 11 of the 14 s of a first 20 x 200-token `generate` (benchmarks/README.md).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def teacher_forced_logits(model, prompts: Sequence[Sequence[int]], continuations) -> list[Any]:
    """Float32 logits of every step when each row is fed `continuations[row]` (for parity checks).

    Runs the same prefill and decode step as `generate_tokens` (eagerly) and returns a list of
    [rows, vocab] tensors: the prefill's logits, then one per fed token but the last, the
    shape of `generate(output_logits=True).logits`.
    """
    import torch

    prompts = [list(p) for p in prompts]
    steps = len(continuations[0])
    with torch.inference_mode(), _attention_kernels():
        decoder = _Decoder(model)
        batch = _Batch(decoder, prompts, steps, set(), 0)
        logits = [_prefill_batch(decoder, batch, prompts)]
        fed = torch.tensor(continuations, device=decoder.device)
        for step in range(1, steps):
            batch.tokens.copy_(fed[:, step - 1])
            logits.append(
                _step_logits(decoder, batch, _kv_len(batch.longest + step - 1, batch.slots))
            )
            batch.slot += 1
    return logits
