"""Build the demo's tiny random Llama model and tokenizer (rule build_demo_model)."""

from pathlib import Path

from emflow.demo import build_tiny_model
from emflow.workflow import run_script


def main():
    corpus = [Path(p).read_text(encoding="utf-8") for p in snakemake.input]
    build_tiny_model(snakemake.output[0], corpus=corpus)


run_script(snakemake, main)
