"""Generation speed: `model.generate` (emflow's hf backend) against emflow.generate.fast_decode.

A random-weight model of Llama-3.2-1B's exact shape (same speed and memory as the real one;
llama3 rope scaling, tied embeddings) is saved once; then every figure is measured in a fresh
process, counting from after the imports, so model loading, CUDA start-up, first-call costs and
CUDA-graph capture are all inside it:

- hf    `model.generate` on left-padded batches of `--hf-batch` rows, as emflow's hf backend
        calls it (do_sample, temperature 1, top_p 1, so transformers' default top_k=50 applies);
- fast  `emflow.generate.fast_decode.generate_tokens` with the same sampling (top_k=50 passed).

Workloads: 20 prompts x 1 sample x 200 new tokens, and 20 x 50 x 600. Prompts are token ids of
realistic chat-prompt length (40-60). Random weights rarely emit an EOS token, and an early stop
would make the two backends do different work, so the model has no EOS id: both decode all
max_new_tokens for every row. Per decode step the script prints the hardware floor: bytes read
(weights once, plus every row's cached keys and values) over 4.8 TB/s, and matmul FLOPs over
990 TFLOP/s (H200/H100 dense bf16).

    python benchmarks/generation_speed.py              # GPU: the exact shape
    python benchmarks/generation_speed.py --probe      # plus: what a first `generate` call costs
    python benchmarks/generation_speed.py --smoke      # tiny model on the CPU, seconds

Only the fast backend's decode loop (emflow.generate.fast_decode) is imported from emflow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from train_speed import LLAMA_3_2_1B  # the model shape, spelled once (stdlib imports only)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL = LLAMA_3_2_1B | {"max_position_embeddings": 131072}
SMOKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=4096,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
WORKLOADS = {"20x1x200": (20, 1, 200), "20x50x600": (20, 50, 600)}
SMOKE_WORKLOADS = {"20x2x16": (20, 2, 16)}
HBM_BYTES_PER_S = 4.8e12  # H200
PEAK_FLOPS = 990e12  # H100/H200 dense bf16
PAD = 0


def build(path: Path, shape: dict) -> None:
    """Random weights of `shape` with Llama-3.2-1B's rope and tied embeddings, saved to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = dict(
        LLAMA3_ROPE, original_max_position_embeddings=min(8192, shape["max_position_embeddings"])
    )
    config = LlamaConfig(
        **shape,
        rope_theta=500000.0,
        rope_scaling=rope,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model.to(dtype).save_pretrained(path)


def prompts_for(questions: int, samples: int, vocab: int) -> list[list[int]]:
    """`questions` random prompts of 40-60 token ids (BOS first), each repeated `samples` times."""
    rng = random.Random(0)
    bos = min(128000, vocab - 1)
    distinct = [
        [bos] + [rng.randrange(1, vocab) for _ in range(rng.randint(39, 59))]
        for _ in range(questions)
    ]
    return [p for p in distinct for _ in range(samples)]


def step_floor(shape: dict, contexts: list[int]) -> tuple[float, float]:
    """Seconds one decode step needs at least: (bytes / HBM bandwidth, matmul FLOPs / peak).

    contexts: every row's tokens in the cache at this step. Weights are read once per step
    (the tied embedding once, as the head); attention reads each row's cached keys and values.
    """
    h, m, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    matmul_params = layers * (2 * h * h + 2 * h * kv + 3 * h * m) + h * shape["vocab_size"]
    weight_bytes = 2 * (matmul_params + layers * 2 * h + h)
    kv_bytes = 2 * layers * 2 * kv * sum(contexts)
    flops = 2 * len(contexts) * matmul_params + 4 * layers * h * sum(contexts)
    return (weight_bytes + kv_bytes) / HBM_BYTES_PER_S, flops / PEAK_FLOPS


def decode_floor(shape: dict, prompts: list[list[int]], new_tokens: int) -> dict[str, float]:
    """The floor of all decode steps, per step (mean) and in total (max of the two, summed)."""
    mem, comp, total = 0.0, 0.0, 0.0
    lengths = [len(p) for p in prompts]
    for t in range(1, new_tokens):
        a, b = step_floor(shape, [n + t for n in lengths])
        mem, comp, total = mem + a, comp + b, total + max(a, b)
    steps = max(1, new_tokens - 1)
    return {"mem_ms": 1000 * mem / steps, "flop_ms": 1000 * comp / steps, "total_s": total}


# --- one figure, in a fresh process --------------------------------------------------------------


def run_one(
    backend: str,
    model_dir: str,
    workload: tuple[int, int, int],
    hf_batch: int,
    repeat: bool,
    max_batches: int | None,
    attention: str | None,
) -> dict[str, Any]:
    """Load the model and generate; seconds from after the imports (this process's start)."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    from emflow.generate import fast_decode as generate_fast
    from emflow.generate.fast_decode import generate_tokens

    if attention:
        generate_fast.DECODE_ATTENTION = attention

    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    sync()
    load_s = time.perf_counter() - t0
    questions, samples, new_tokens = workload
    prompts = prompts_for(questions, samples, model.config.vocab_size)
    stats: dict[str, Any] = {}

    def hf() -> list[list[int]]:
        torch.manual_seed(0)
        out: list[list[int]] = []
        batches = range(0, len(prompts), hf_batch)
        for b, start in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            rows = prompts[start : start + hf_batch]
            longest = max(len(p) for p in rows)
            ids = torch.tensor([[PAD] * (longest - len(p)) + p for p in rows], device=device)
            mask = torch.tensor(
                [[0] * (longest - len(p)) + [1] * len(p) for p in rows], device=device
            )
            with torch.inference_mode():
                gen = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    max_new_tokens=new_tokens,
                    pad_token_id=PAD,
                )
            out += gen[:, longest:].tolist()
        return out

    def fast() -> list[list[int]]:
        stats.clear()
        return generate_tokens(
            model,
            prompts,
            max_new_tokens=new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            seed=0,
            eos_token_ids=set(),
            pad_token_id=PAD,
            stats=stats,
        )

    call = hf if backend == "hf" else fast
    t1 = time.perf_counter()
    tokens = call()
    sync()
    first_s = time.perf_counter() - t1
    total_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "backend": backend,
        "total_s": round(total_s, 2),
        "load_s": round(load_s, 2),
        "generate_s": round(first_s, 2),
        "rows": len(tokens),
        "all_rows_full_length": all(len(t) == new_tokens for t in tokens),
        "device": torch.cuda.get_device_name() if cuda else "CPU",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
    }
    if backend == "hf":
        done_batches = len(range(0, len(prompts), hf_batch))
        if max_batches is not None and max_batches < done_batches:
            result["projected_generate_s"] = round(first_s * done_batches / max_batches, 1)
            result["timed_batches"] = f"{max_batches} of {done_batches}"
        result["ms_per_step"] = round(
            1000 * first_s / new_tokens / min(done_batches, max_batches or done_batches), 2
        )
    else:
        result["attention"] = generate_fast.DECODE_ATTENTION
        result["ms_per_step"] = round(1000 * stats["decode_s"] / max(1, stats["decode_steps"]), 2)
        result |= {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}
    if repeat:
        t2 = time.perf_counter()
        call()
        sync()
        result["second_call_s"] = round(time.perf_counter() - t2, 2)
    if cuda:
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


# --- the warm-up probe: what a fresh process's first `generate` spends --------------------------


def probe(model_dir: str, variant: str) -> dict[str, Any]:
    """Phases of a fresh process up to a second `generate` call, on 20 x 1 x 200.

    variant: "baseline"; "no_cudnn_sdpa" (SDPA's cuDNN backend off); "expandable_segments" or
    "eager_modules" (set through the environment by the caller).
    """
    import cProfile
    import io
    import pstats

    import torch
    from transformers import LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

    phases: dict[str, Any] = {"variant": variant}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        torch.cuda.synchronize()
        now = time.perf_counter()
        phases[name] = round(now - t, 3)
        t = now

    torch.zeros(1, device="cuda")
    lap("cuda_context_s")
    if variant == "no_cudnn_sdpa":
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda").eval()
    lap("load_s")
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    _ = a @ a
    lap("first_matmul_s")
    prompts = prompts_for(20, 1, model.config.vocab_size)
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (longest - len(p)) + p for p in prompts], device="cuda")
    mask = (ids != PAD).long()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    lap("first_forward_s")
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    lap("second_forward_s")
    q = torch.randn(20, 32, 1, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(20, 32, 100, 64, device="cuda", dtype=torch.bfloat16)
    sdpa_mask = torch.ones(20, 1, 1, 100, dtype=torch.bool, device="cuda")
    # Which SDPA backend the decode step of `generate` gets (0 math, 1 flash, 2 efficient, 3 cudnn).
    try:
        phases["sdpa_backend_decode"] = int(torch._fused_sdp_choice(q, k, k, sdpa_mask))
        x = torch.randn(20, 32, longest, 64, device="cuda", dtype=torch.bfloat16)
        square = torch.ones(20, 1, longest, longest, dtype=torch.bool, device="cuda")
        phases["sdpa_backend_prefill"] = int(torch._fused_sdp_choice(x, x, x, square))
    except (AttributeError, RuntimeError) as err:
        phases["sdpa_backend"] = f"unknown: {err}"

    class StepClock(LogitsProcessor):
        """Wall time of every decode step (synchronised: this is a probe)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            return scores

    def generate(clock: StepClock) -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                max_new_tokens=200,
                pad_token_id=PAD,
                logits_processor=LogitsProcessorList([clock]),
            )

    for call in ("first", "second"):
        clock = StepClock()
        segments = torch.cuda.memory_stats().get("segment.all.allocated", 0)
        profiler = cProfile.Profile() if variant == "baseline" and call == "first" else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        generate(clock)
        if profiler:
            profiler.disable()
        lap(f"{call}_generate_s")
        gaps = sorted(b - a for a, b in zip(clock.times, clock.times[1:], strict=False))
        phases[f"{call}_prefill_s"] = round(clock.times[0] - start, 3)
        phases[f"{call}_step_ms_median"] = round(1000 * gaps[len(gaps) // 2], 2)
        phases[f"{call}_step_ms_max"] = round(1000 * gaps[-1], 2)
        phases[f"{call}_cudaMalloc_calls"] = (
            torch.cuda.memory_stats().get("segment.all.allocated", 0) - segments
        )
        if profiler:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
            phases["first_generate_top_tottime"] = text.getvalue()[-3500:]
    return phases


# --- where a fast decode step's time goes ------------------------------------------------------


def profile_steps(model_dir: str) -> dict[str, Any]:
    """ms per replayed decode step of 1000 rows (20 x 50), per attention variant and cache length.

    Also: top_k 50 sampled over the whole vocabulary against over its candidates, the step with
    attention skipped (the rest of the step), with top_k off, greedy, and the largest kernels of
    one eager step by CUDA time (the default attention and sampling).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaForCausalLM

    from emflow.generate import fast_decode as gf
    from emflow.generate.fast_model import Decoder

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda").eval()
    prompts = prompts_for(20, 50, model.config.vocab_size)
    out: dict[str, Any] = {}
    with torch.inference_mode(), gf._attention_kernels():
        decoder = Decoder(model, gf.DECODE_ATTENTION)
        batch = gf._Batch(decoder, prompts, 800, set(), PAD)
        gen = torch.Generator(device="cuda").manual_seed(0)

        def timed(kv_len: int, sampling: gf.Sampling, candidates: bool = True) -> float:
            width = gf.candidate_width(sampling) if candidates else None

            def step() -> None:
                batch.slot.fill_(kv_len - 1)
                gf._decode_step(decoder, batch, sampling, gen, kv_len, width)

            step()  # eager warm-up
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(gen)
            with torch.cuda.graph(graph):
                step()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            graph.replay()
            start.record()
            for _ in range(20):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            return round(start.elapsed_time(end) / 20, 2)

        top50 = gf.Sampling(1.0, 1.0, 50)
        default = decoder.attention
        for variant in ("sdpa", "bmm_q", "triton"):
            decoder.attention = variant
            for kv_len in (128, 384, 768):
                out[f"{variant} kv{kv_len} top_k 50, vocabulary"] = timed(kv_len, top50, False)
                out[f"{variant} kv{kv_len} top_k 50, candidates"] = timed(kv_len, top50)
        decoder.attention = default
        out[f"{default} kv384 top_k off"] = timed(384, gf.Sampling(1.0, 1.0, None))
        out[f"{default} kv384 greedy"] = timed(384, gf.Sampling(0.0))
        real_attend = decoder.attend
        decoder.attend = lambda q, *rest: q  # the step without attention
        out["no attention kv384, candidates"] = timed(384, top50)
        decoder.attend = real_attend
        batch.slot.fill_(767)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            gf._decode_step(decoder, batch, top50, gen, 768, gf.candidate_width(top50))
            torch.cuda.synchronize()
        out[f"kernels_{default}_kv768"] = prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=14, max_name_column_width=60
        )
    return out


# --- the driver ----------------------------------------------------------------------------------


def child(
    args: list[str], env: dict[str, str] | None = None, timeout: int = 900
) -> dict[str, Any] | None:
    """Run this script in a fresh process; its RESULT line, or None (the error is printed)."""
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(
            f"{' '.join(args)}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True
        )
        return None
    return json.loads(line[7:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds")
    parser.add_argument("--workloads", default=None, help="comma-separated, e.g. 20x1x200")
    parser.add_argument("--backends", default="hf,fast")
    parser.add_argument("--hf-batch", type=int, default=1000, help="rows per generate call")
    parser.add_argument(
        "--hf32",
        action="store_true",
        help="also hf at emflow's configured batch of 32 rows on 20x50x600 "
        "(two batches timed, projected)",
    )
    parser.add_argument("--probe", action="store_true", help="also the first-call warm-up probe")
    parser.add_argument("--model-dir", help="where the model is (built there if missing)")
    parser.add_argument(
        "--attention", default="", help="fast backend's decode attention variants, e.g. sdpa,bmm_q"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also: where a 1000-row fast decode step spends its time",
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--probe-run", help=argparse.SUPPRESS)
    parser.add_argument("--profile-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-batches", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = SMOKE if args.smoke else FULL
    known = SMOKE_WORKLOADS if args.smoke else WORKLOADS
    if args.build:
        build(Path(args.build), shape)
        print("RESULT {}")
        return 0
    if args.run:
        workload = tuple(int(x) for x in args.workloads.split("x"))
        result = run_one(
            args.run,
            args.model_dir,
            workload,
            args.hf_batch,
            args.repeat,
            args.max_batches,
            args.attention or None,
        )
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    if args.profile_run:
        print("RESULT " + json.dumps(profile_steps(args.model_dir)), flush=True)
        return 0
    if args.probe_run:
        print("RESULT " + json.dumps(probe(args.model_dir, args.probe_run)), flush=True)
        return 0

    names = args.workloads.split(",") if args.workloads else list(known)
    backends = args.backends.split(",")
    smoke = ["--smoke"] if args.smoke else []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(Path(tmp) / "model")
        if not Path(model_dir, "config.json").exists():
            t0 = time.perf_counter()
            if child(["--build", model_dir, *smoke]) is None:
                return 1
            print(f"built the random-weight model in {time.perf_counter() - t0:.0f} s", flush=True)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        if args.profile and not args.smoke:
            steps = child(["--profile-run", "--model-dir", model_dir])
            if steps is not None:
                kernels = steps.pop("kernels_sdpa_kv768")
                print(f"profile, ms per replayed step of 1000 rows: {json.dumps(steps)}")
                print(kernels, flush=True)
        variants = args.attention.split(",") if args.attention else [""]
        for name in names:
            for backend in backends:
                for attention in variants if backend == "fast" else [""]:
                    label = f"fast[{attention}]" if attention else backend
                    run = [
                        "--run",
                        backend,
                        "--workloads",
                        name,
                        "--model-dir",
                        model_dir,
                        "--hf-batch",
                        str(args.hf_batch),
                        "--attention",
                        attention,
                        *smoke,
                    ]
                    # The first workload runs twice in its process: the 2nd call has no start-up.
                    if name == names[0]:
                        run.append("--repeat")
                    result = child(run)
                    if result is not None:
                        results[(name, label)] = result
                        print(f"{name} {label}: {json.dumps(result)}", flush=True)
        if args.hf32 and not args.smoke:
            run = [
                "--run",
                "hf",
                "--workloads",
                "20x50x600",
                "--model-dir",
                model_dir,
                "--hf-batch",
                "32",
                "--max-batches",
                "2",
            ]
            result = child(run)
            if result is not None:
                results[("20x50x600", "hf@32")] = result
                print(f"20x50x600 hf@32: {json.dumps(result)}", flush=True)
        if args.probe and not args.smoke:
            for variant, extra in (
                ("baseline", {}),
                ("no_cudnn_sdpa", {}),
                ("expandable_segments", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
                ("eager_modules", {"CUDA_MODULE_LOADING": "EAGER"}),
            ):
                phases = child(
                    ["--probe-run", variant, "--model-dir", model_dir], env=os.environ | extra
                )
                if phases is not None:
                    top = phases.pop("first_generate_top_tottime", None)
                    print(f"probe {json.dumps(phases)}", flush=True)
                    if top:
                        print(top, flush=True)
    report(results, names, shape, known)
    return 0 if results else 1


def report(
    results: dict[tuple[str, str], dict[str, Any]],
    names: list[str],
    shape: dict,
    known: dict[str, tuple[int, int, int]],
) -> None:
    """The side-by-side table, the floor per decode step, and fast/hf."""
    if not results:
        return
    any_result = next(iter(results.values()))
    print(
        f"\nmachine: {any_result['device']}; torch {any_result['torch']}, transformers "
        f"{any_result['transformers']}, CUDA {any_result['cuda']}"
    )
    print(
        "sampling: temperature 1, top_p 1, top_k 50 (generate's default); no EOS id, so every "
        "row decodes all max_new_tokens in both backends"
    )
    print(
        "| workload | backend | fresh process (load incl.) | load | generate | 2nd call "
        "| ms/step | floor ms/step (HBM / FLOP) | peak GiB |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        q, s, n = known.get(name) or tuple(int(x) for x in name.split("x"))
        floor = decode_floor(shape, prompts_for(q, s, shape["vocab_size"]), n)
        labels = [b for n, b in results if n == name]
        for backend in sorted(labels, key=lambda b: (not b.startswith("hf"), b)):
            r = results[(name, backend)]
            total = f"{r['total_s']} s"
            if "projected_generate_s" in r:
                total = (
                    f"{r['load_s'] + r['projected_generate_s']:.1f} s (projected from "
                    f"{r['timed_batches']} batches)"
                )
            print(
                f"| {name} | {backend} | {total} | {r['load_s']} s | {r['generate_s']} s | "
                f"{r.get('second_call_s', '')} | {r['ms_per_step']} | "
                f"{floor['mem_ms']:.2f} / {floor['flop_ms']:.2f} | {r.get('peak_gib', '')} |"
            )
        print(f"  decode floor for {name}: {floor['total_s']:.2f} s in all")
    for (name, label), fast in results.items():
        hf = results.get((name, "hf"))
        if hf and label.startswith("fast"):
            print(
                f"{label}/hf {name}: {fast['total_s'] / hf['total_s']:.3f} "
                f"({hf['total_s'] / fast['total_s']:.1f}x faster, fresh process each)"
            )


if __name__ == "__main__":
    sys.exit(main())
