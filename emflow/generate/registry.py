"""Every generation backend by its `generation.backend` name: a new backend is one module
(a `GenerationBackend` of emflow.generate.backend) and one line here."""

from __future__ import annotations

from emflow.generate.backend import GenerationBackend
from emflow.generate.fast import FastBackend
from emflow.generate.hf import HFBackend
from emflow.generate.openai import OpenAIBackend

REGISTRY: dict[str, type[GenerationBackend]] = {
    "hf": HFBackend,  # transformers' generate
    "fast": FastBackend,  # emflow's decode loop
    "openai": OpenAIBackend,  # an OpenAI-compatible endpoint
}
