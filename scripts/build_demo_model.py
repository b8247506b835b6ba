"""Build the demo's tiny random Llama model and tokenizer (rule build_demo_model)."""

from emflow.demo import build_tiny_model
from emflow.workflow import run_script

run_script(snakemake, lambda: build_tiny_model(snakemake.output[0]))
