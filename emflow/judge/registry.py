"""Every judge backend, by the name `judge.backend` / `--backend` gives it.

A new backend is one module beside these (a class with JudgeBackend's `endpoint`, `model_files`
and `answer`) and one line here, as inspect_ai registers each model API and lm-eval each model;
JudgeSettings' `backend` choices name the same keys (a test keeps them equal).
"""

from __future__ import annotations

from emflow.judge.backend import JudgeBackend
from emflow.judge.hf import HFJudge
from emflow.judge.openai import OpenAIJudge

BACKENDS: dict[str, type[JudgeBackend]] = {"openai": OpenAIJudge, "hf": HFJudge}
