"""One generations CSV from one adapter (or the base model), for tests and benchmarks that need a
single job's answers."""

from __future__ import annotations

from emflow.generate.backend import GenerationOutput
from emflow.generate.job import generate_for_adapters


def generate_responses(model_name, questions, output_csv, *, adapter_dir=None, settings) -> int:
    """A job of one output: every question answered its `samples` times into one CSV."""
    outputs = [GenerationOutput(output_csv, adapter_dir)]
    return generate_for_adapters(model_name, questions, outputs, settings=settings)[0]
