"""Build the demo's tiny random Llama model and tokenizer (rule build_demo_model)."""

from emflow.data.demo import build_tiny_model
from emflow.workflow.jobs import run_script

run_script(snakemake, lambda: build_tiny_model(snakemake.output[0]))
