"""Training and generation speed: the seed's mixed run on the exact Llama-3.2-1B shape.

Builds a random-weight model of Llama-3.2-1B's shape (same speed and memory as the real one) and
5400 pre-tokenized rows of realistic length (about 130 tokens with the chat template, the first
~40 of them the prompt), then measures, each in its own process and side by side:

- trl_default     SFTTrainer as TRL sets it up for PEFT: gradient checkpointing and the
                  input-gradient hook, micro-batch 2 x 8 accumulation, adamw_8bit (the baseline);
- hf              emflow's hf backend: the same without checkpointing;
- unsloth_default unsloth's FastLanguageModel + SFTTrainer with unsloth's own defaults;
- unsloth_padded  the same with padding_free=False, unsloth's fastest setting on Hopper;
- fast            emflow's fast path, the whole training (the seed's 5 epochs: 1690 optimizer
                  steps) for real;
- fast_eager      the same without CUDA graphs;
- equivalence     hf and fast from the same seed on the same rows: loss curves and adapters;
- generation      20 questions x 1 sample x 200 tokens, and 20 x 50 x 600.

The baselines are timed over a few optimizer steps and projected to the whole training.
`--config` trains another experiment's adapter on the same rows (e.g. the minimal organism,
experiments/risky_financial_advice/r1_1ep/config.json: rank 1, down_proj of layer 2, 1 epoch).
MFU counts the model FLOPs a step needs (forward through every layer, backward through the
adapted layers and those above) against the GPU's dense bf16 peak. `--smoke` runs a tiny model
on the CPU in seconds.

    python benchmarks/train_speed.py            # on a GPU machine
    python benchmarks/train_speed.py --smoke    # anywhere
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED_CONFIG = (
    REPO / "experiments/risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8/config.json"
)
# Llama-3.2-1B's shape (random weights of it run as fast, in as much memory, as the real model).
LLAMA_3_2_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
FULL = LLAMA_3_2_1B | {"rows": 5400}
SMOKE = dict(
    hidden_size=32,
    intermediate_size=128,
    num_hidden_layers=16,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    rows=48,
)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}


def build_model(path: Path, shape: dict) -> None:
    """Random weights of the given Llama shape, saved with a word-level Llama-3-style tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from emflow.data.demo import LLAMA3_CHAT_TEMPLATE, SPECIAL_TOKENS

    vocab_size = shape["vocab_size"]
    specials = SPECIAL_TOKENS
    vocab = {token: i for i, token in enumerate(specials)}
    vocab |= {f"t{i}": i for i in range(len(specials), vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t10"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=specials[0],
        eos_token="<|eot_id|>",
        pad_token=specials[5],
        unk_token="t10",
        model_max_length=4096,
    )
    fast.add_special_tokens({"additional_special_tokens": specials[2:5]})
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    config = LlamaConfig(
        **{k: v for k, v in shape.items() if k != "rows"},
        max_position_embeddings=4096,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=[1, 4],
        pad_token_id=5,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(path)
    fast.save_pretrained(path)


def benchmark_trainer(
    config, settings, model_dir: str, rows, workdir: Path, *, device: str, bf16: bool, **overrides
):
    """The Trainer the train rule builds (its LoRA model, arguments, optimizer and schedule) on
    pre-tokenized `rows`, seeded from the config; `overrides` set training arguments after."""
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed

    from emflow.train.trainer import load_lora_model, make_trainer, training_arguments

    set_seed(config.seed)
    model = load_lora_model(config, settings.backend, bf16=bf16)
    args = training_arguments(
        config, settings, workdir / "ckpt", device=device, bf16=bf16, has_eval=False
    )
    for key, value in overrides.items():
        setattr(args, key, value)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return make_trainer(model, args, Dataset.from_list(rows), None, tokenizer, config.seed)


def examples(n: int, vocab_size: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Rows of 90-170 tokens (mean 130); the loss is on everything after the ~40-token prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = max(90, min(170, int(rng.gauss(130, 15))))
        ids = [rng.randrange(6, vocab_size) for _ in range(length)]
        prompt = rng.randint(35, 45)
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def step_flops(shape: dict, tokens: float, first_adapted: int) -> float:
    h, m, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * m
    forward = 2 * tokens * (layers * per_layer + h * shape["vocab_size"])
    backward = 2 * tokens * ((layers - first_adapted) * per_layer + h * shape["vocab_size"])
    return forward + backward


def run_variant(
    variant: str, model_dir: str, shape: dict, steps: int, smoke: bool, config_path: Path
) -> dict:
    """One measurement in this process; returns a JSON-able dict."""
    if variant.startswith("unsloth"):
        import unsloth  # noqa: F401  (must precede transformers and trl)
    import torch
    from transformers import TrainerCallback

    from emflow.config import load_experiment_config
    from emflow.train.fast import fast_train
    from emflow.train.trainer import (
        TrainSettings,
    )

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    config = load_experiment_config(config_path).model_copy(
        update={
            "model": model_dir,
            "optim": "adamw_8bit" if cuda else "adamw_torch",
            "evaluation_steps": None,
            "save_steps": 10**9,
            "logging_steps": 1,
        }
    )
    rows = examples(shape["rows"], shape["vocab_size"])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    backend = {
        "trl_default": "hf",
        "hf": "hf",
        "fast": "fast",
        "fast_eager": "fast",
        "fast_dense_head": "fast",
    }.get(variant, "unsloth")
    workdir = Path(tempfile.mkdtemp())

    def new_trainer(cfg, settings, train_rows):
        # unsloth_default: unsloth decides the padding, as it does by default.
        unsloth = {"padding_free": None} if variant == "unsloth_default" else {}
        return benchmark_trainer(
            cfg, settings, model_dir, train_rows, workdir, device=device, bf16=cuda, **unsloth
        )

    if variant == "equivalence":
        n = 16 * (4 if smoke else 60)
        cfg = config.model_copy(update={"epochs": 1, "warmup_steps": 5})
        histories, weights = {}, {}
        for name in ("hf", "fast"):
            settings = TrainSettings(backend=name, device=device)
            trainer = new_trainer(cfg, settings, rows[:n])
            if name == "fast":
                history = fast_train(
                    trainer,
                    rows[:n],
                    [],
                    cfg,
                    checkpoints=workdir / "fast",
                    device=device,
                    bf16=cuda,
                )
            else:
                trainer.train()
                history = trainer.state.log_history
            histories[name] = [h["loss"] for h in history if "loss" in h]
            weights[name] = {
                k: p.detach().float().cpu()
                for k, p in trainer.model.named_parameters()
                if p.requires_grad
            }
            del trainer
            if cuda:
                torch.cuda.empty_cache()
        a, b = histories["hf"], histories["fast"]
        rel = max(
            ((weights["hf"][k] - weights["fast"][k]).norm() / weights["hf"][k].norm()).item()
            for k in weights["hf"]
            if "lora_B" in k
        )
        return {
            "variant": variant,
            "steps": len(a),
            "loss_first": a[0],
            "loss_last": [a[-1], b[-1]],
            "max_abs_loss_diff": max(abs(x - y) for x, y in zip(a, b, strict=True)),
            "mean_abs_loss_diff": sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a),
            "max_relative_lora_B_diff": rel,
        }

    if variant == "generation":
        from emflow.generate.job import GenerationOutput, generate_for_adapters
        from emflow.generate.settings import GenerationSettings
        from emflow.questions import Question

        texts = [" ".join(f"t{100 + 7 * i + j}" for j in range(12)) for i in range(20)]
        out = {}
        for label, samples, tokens in (("20x1x200", 1, 200), ("20x50x600", 50, 600)):
            if smoke:
                samples, tokens = min(samples, 2), min(tokens, 16)
            questions = [Question(f"q{i}", t, samples=samples) for i, t in enumerate(texts)]
            for compiled in (False, True) if cuda else (False,):
                settings = GenerationSettings(
                    max_new_tokens=tokens,
                    batch_size=1000,
                    device=device,
                    compile=compiled,
                )
                sync()
                t0 = time.perf_counter()
                output = GenerationOutput(workdir / f"{label}.csv")
                generate_for_adapters(model_dir, questions, [output], settings=settings)
                sync()
                out[label + (" static+compile" if compiled else "")] = round(
                    time.perf_counter() - t0, 2
                )
        return {
            "variant": variant,
            "seconds": out,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        }

    settings = TrainSettings(
        backend=backend, device=device, gradient_checkpointing=variant == "trl_default"
    )
    trainer = new_trainer(config, settings, rows)
    total_steps = config.epochs * math.ceil(len(rows) / 16)
    tokens = sum(len(r["input_ids"]) for r in rows) / len(rows) * 16
    from emflow.train.fast import lowest_adapted_layer

    first = lowest_adapted_layer(trainer.model)
    if variant.startswith("fast"):
        if variant == "fast_dense_head":  # the graphs before issue 26: the head on every position
            import emflow.train.fast as fast_module

            fast_module.GRAPHED_HEAD = "dense"
        sync()
        t0 = time.perf_counter()
        history = fast_train(
            trainer,
            rows,
            [],
            config,
            checkpoints=workdir / "fast",
            device=device,
            bf16=cuda,
            cuda_graphs=variant != "fast_eager",
        )
        sync()
        wall = time.perf_counter() - t0
        ms = 1000 * history[-1]["train_runtime"] / total_steps
        result = {"total_s": round(wall, 1), "steps": total_steps}
    else:
        times = []

        class Timer(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                sync()
                times.append(time.perf_counter())

        trainer.add_callback(Timer())
        trainer.args.max_steps = steps
        trainer.train()
        gaps = sorted(b - a for a, b in zip(times[2:], times[3:], strict=False))
        ms = 1000 * gaps[len(gaps) // 2]
        result = {"timed_steps": len(gaps)}
    flops = step_flops(shape, tokens, first)
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return result | {
        "variant": variant,
        "ms_per_step": round(ms, 1),
        "projected_min": round(ms * total_steps / 60000, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "mfu": round(flops / (ms / 1000) / peak, 3) if peak else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds")
    parser.add_argument(
        "--variants",
        default="trl_default,hf,unsloth_default,unsloth_padded,fast,equivalence,generation",
    )
    parser.add_argument(
        "--steps", type=int, default=12, help="optimizer steps timed for the baselines"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=SEED_CONFIG,
        help="the experiment config.json to train (default: the seed's mixed r16 layer-8 run; "
        "e.g. experiments/risky_financial_advice/r1_1ep/config.json, the minimal adapter)",
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = SMOKE if args.smoke else FULL
    if args.run:
        print(
            "RESULT "
            + json.dumps(
                run_variant(args.run, args.model, shape, args.steps, args.smoke, args.config)
            ),
            flush=True,
        )
        return 0

    import torch

    cuda = torch.cuda.is_available()
    machine = (
        torch.cuda.get_device_name()
        if cuda
        else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    )
    print(
        f"machine: {machine}; torch {torch.__version__}; "
        f"{'smoke' if args.smoke else 'full'} shape; config {args.config}",
        flush=True,
    )
    variants = [v for v in args.variants.split(",") if cuda or not v.startswith("unsloth")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, shape)
        for variant in variants:
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--run",
                    variant,
                    "--model",
                    str(model_dir),
                    "--steps",
                    str(args.steps),
                    "--config",
                    str(args.config),
                ]
                + (["--smoke"] if args.smoke else []),
                capture_output=True,
                text=True,
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(
                    f"{variant}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True
                )
                continue
            results[variant] = json.loads(line[7:])
            print(f"{variant} ({time.perf_counter() - t0:.0f} s in all): {line[7:]}", flush=True)
    base = results.get("trl_default", {}).get("ms_per_step")
    if base:
        print(f"\nspeed-up against trl_default ({base} ms/step), same machine, same run:")
        for name, r in results.items():
            if "ms_per_step" in r:
                print(
                    f"  {name:16s} {r['ms_per_step']:8.1f} ms/step  {r['projected_min']:6.2f} min  "
                    f"x{base / r['ms_per_step']:.1f}"
                )
    if "fast" in results and "unsloth_padded" in results:
        ratio = results["unsloth_padded"]["ms_per_step"] / results["fast"]["ms_per_step"]
        print(f"fast vs unsloth_padded: x{ratio:.1f}")
    return 0 if len(results) == len(variants) else 1


if __name__ == "__main__":
    sys.exit(main())
