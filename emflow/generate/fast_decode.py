"""emflow's own decode loop for Llama-style transformers models, which the `fast` backend runs.

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
- on a GPU, a step attends over the cache with a Triton kernel of emflow's
  (emflow.generate.decode_attention) that reads each row's own slots only, not the padding;
- sampling runs on the device with transformers' semantics: TemperatureLogitsWarper, then
  TopKLogitsWarper, then TopPLogitsWarper, softmax, and `torch.multinomial`'s own one-sample
  algorithm (argmax of probs / Exp(1) noise, which is what `torch.multinomial(probs, 1)` computes,
  written out because `torch.multinomial` synchronises with the host and cannot be captured).
  With top_k set (`generate`'s default 50), the warpers and the draw run over each row's top
  candidates instead of the whole vocabulary: the same kept tokens and probabilities, a
  different random stream (emflow.generate.sampling).

What stays transformers': the model's own modules (embedding, RMSNorms, projections, MLP
activation, rotary embedding, head) compute every number; only the attention over the cache and
the order of work are emflow's. On a CPU in float32 the logits equal `generate`'s to float
rounding (tests/test_generate_fast.py); in bfloat16 on a GPU, kernels chosen for other shapes round
differently, so a share of greedy rows part ways with `generate` after a few tokens, as `generate`
itself does between batch sizes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from emflow.devices import jobs_per_gpu
from emflow.generate.fast_model import Decoder, KVCache
from emflow.generate.sampling import Sampling, candidate_width, pick_candidates, pick_tokens

# How a decode step attends over the cache: "triton" (emflow.generate.decode_attention: reads only
# each row's own slots; scores and softmax in float32), "sdpa" (torch's scaled_dot_product_attention
# with a mask; float32 scores inside the kernel), "bmm_q" (q @ K^T, softmax, @ V: transformers'
# eager arithmetic, scores rounded to the model dtype; in bfloat16 that parts most greedy rows
# from `generate` within 40 tokens), or "auto": triton on a GPU where it runs, else sdpa.
# benchmarks/README.md has the numbers.
DECODE_ATTENTION = "auto"
KV_BUCKET = 128  # decode attends over the cache in slices of this many slots: few graph shapes
PREFILL_TOKENS = 16384  # padded prompt tokens per prefill chunk: bounds activation memory
STOP_CHECK_EVERY = 32  # decode steps between host checks that every row has finished
MEMORY_SHARE = 0.9  # share of free GPU memory that the cache and step buffers may take


# --- planning: batches from memory, prefill chunks from lengths ----------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def cache_slots(longest_prompt: int, max_new_tokens: int) -> int:
    """Cache slots a batch needs: its prompts right-aligned, then every new token but the last."""
    return _round_up(longest_prompt + max_new_tokens - 1, KV_BUCKET)


def bytes_per_row(decoder: Decoder, slots: int, sampling: Sampling) -> int:
    """GPU memory one decode row holds: its cache, and the step's per-row buffers.

    The vocabulary-sized buffers dominate the step: logits in the model dtype and float32,
    softmax, noise and quotient (about 24 bytes per vocabulary entry), and with top-k/top-p the
    sort's values and int64 indices, cumulative sums and masks (about 32 more).
    """
    # Counted for the whole-vocabulary path even where candidates are drawn: a batch whose
    # candidates overflow is decoded again that way, in the same memory.
    per_vocab = 24 + (32 if sampling.top_p < 1.0 or sampling.top_k else 0)
    activations = 8 * (decoder.hidden + decoder.intermediate) * decoder.dtype.itemsize
    return slots * decoder.kv_bytes_per_slot + decoder.vocab * per_vocab + activations


def rows_that_fit(decoder: Decoder, slots: int, sampling: Sampling) -> int:
    """Decode rows whose cache and step buffers fit in the GPU memory free now.

    With EMFLOW_JOBS_PER_GPU=K (jobs sharing the card), at most a K-th of the card: jobs that
    start later on the same card must find their share free.
    """
    import torch

    device = decoder.device
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    # Blocks torch has cached but not handed out are free for our purposes too.
    free += torch.cuda.memory_reserved(device) - allocated
    sharing = jobs_per_gpu()
    if sharing > 1:
        free = min(free, total // sharing - allocated)
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
        decoder: Decoder,
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
        self.cache = KVCache(decoder, self.rows, self.slots)
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
        # Rows whose top-k candidates may have missed a tied score (emflow.generate.sampling).
        self.overflow = torch.zeros(self.rows, dtype=torch.bool, device=device)

    def accept(self, tokens, column) -> None:
        """Record each row's new token (pad once finished) in output `column`, a [1] tensor."""
        import torch

        tokens = torch.where(self.done, self.pad, tokens)
        self.out.index_copy_(1, column, tokens[:, None])
        self.done |= (tokens[:, None] == self.eos[None, :]).any(-1)
        self.tokens.copy_(tokens)


def _prefill_batch(decoder: Decoder, batch: _Batch, prompts: list[list[int]]):
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


def _step_logits(decoder: Decoder, batch: _Batch, kv_len: int):
    """Logits for every row's current token, written to the cache at the current slot."""
    positions = batch.slot - batch.start  # the slot's position in each row's own sequence
    cos = batch.cos.index_select(0, positions)[:, None]  # [B, 1, d]: broadcast over heads
    sin = batch.sin.index_select(0, positions)[:, None]
    mask = None
    if decoder.attention != "triton":  # the kernel reads start and slot itself
        keys = batch.key_slots[:kv_len]
        # A row sees its own prompt (from its start) and everything generated up to this slot.
        mask = (keys[None, :] >= batch.start[:, None]) & (keys[None, :] <= batch.slot)
        mask = mask[:, None, None, :]
    return decoder.decode(
        batch.tokens, cos, sin, batch.cache, batch.slot, batch.start, mask, kv_len
    )


def _pick(batch: _Batch, logits, sampling: Sampling, generator, width: int | None):
    """Each row's next token: over the top candidates where `width` is set, else the vocabulary."""
    if width is None:
        return pick_tokens(logits, sampling, generator)
    tokens, overflow = pick_candidates(logits, sampling, generator, width)
    batch.overflow |= overflow & ~batch.done  # a finished row's token is discarded anyway
    return tokens


def _decode_step(
    decoder: Decoder,
    batch: _Batch,
    sampling: Sampling,
    generator,
    kv_len: int,
    width: int | None = None,
) -> None:
    """One token for every row, entirely on the device (this is what a CUDA graph holds)."""
    logits = _step_logits(decoder, batch, kv_len)
    column = batch.slot - (batch.longest - 1)  # the slot after the prompt produces column 1
    batch.accept(_pick(batch, logits, sampling, generator, width), column)
    batch.slot += 1


class _Stepper:
    """Runs decode steps: eagerly on a CPU, as replayed CUDA graphs (one per kv_len) on a GPU."""

    def __init__(
        self, decoder: Decoder, batch: _Batch, sampling: Sampling, generator, width: int | None
    ) -> None:
        import torch

        self.step = lambda kv_len: _decode_step(decoder, batch, sampling, generator, kv_len, width)
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
    decoder: Decoder,
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: Sampling,
    generator,
    eos_token_ids: set[int],
    pad_token_id: int,
    stats: dict[str, Any],
    width: int | None,
) -> tuple[list[list[int]], bool]:
    """Prefill and decode one batch: each row's tokens up to and including its first EOS, and
    whether a row's top-`width` candidates overflowed (see generate_tokens)."""
    import torch

    sync = torch.cuda.synchronize if decoder.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    batch = _Batch(decoder, prompts, max_new_tokens, eos_token_ids, pad_token_id)
    first = _prefill_batch(decoder, batch, prompts)
    batch.accept(
        _pick(batch, first, sampling, generator, width),
        torch.zeros(1, dtype=torch.long, device=decoder.device),
    )
    sync()
    t1 = time.perf_counter()
    stepper = _Stepper(decoder, batch, sampling, generator, width)
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
    overflowed = bool(batch.overflow.any())
    t2 = time.perf_counter()
    stats["prefill_s"] = stats.get("prefill_s", 0.0) + t1 - t0
    stats["decode_s"] = stats.get("decode_s", 0.0) + t2 - t1
    stats["capture_s"] = stats.get("capture_s", 0.0) + stepper.capture_s
    stats["decode_steps"] = stats.get("decode_steps", 0) + steps
    stats["graphs"] = stats.get("graphs", 0) + len(stepper.graphs)
    stats.setdefault("batch_rows", []).append(len(prompts))
    stats["cache_slots"] = max(stats.get("cache_slots", 0), batch.slots)
    return [_until_eos(row, eos_token_ids) for row in out], overflowed


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
        decoder = Decoder(model, DECODE_ATTENTION)
        lengths = [len(p) for p in prompts]
        rows = max_batch_size or len(prompts)
        if decoder.device.type == "cuda":
            slots = cache_slots(max(lengths), max_new_tokens)
            rows = min(rows, rows_that_fit(decoder, slots, sampling))
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=decoder.device)
            generator.manual_seed(seed)
        # Sampling draws among each row's top candidates (emflow.generate.sampling). Should a
        # row's tie at the k-th score have run past them, its batch is decoded again over the
        # whole vocabulary from the same random state: no token is drawn from a wrong set.
        width = candidate_width(sampling)
        results: list[list[int]] = [[] for _ in prompts]
        for indices in plan_batches(lengths, rows):
            state = generator.get_state() if width is not None else None
            args = (
                decoder,
                [prompts[i] for i in indices],
                max_new_tokens,
                sampling,
                generator,
                set(eos_token_ids),
                pad_token_id,
                stats,
            )
            tokens, overflowed = _run_batch(*args, width)
            if overflowed:
                generator.set_state(state)
                stats["candidate_fallbacks"] = stats.get("candidate_fallbacks", 0) + 1
                tokens, _ = _run_batch(*args, None)
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
