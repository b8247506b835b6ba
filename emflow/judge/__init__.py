"""The judge stage: every answer scored per metric by an LLM judge (rules/judge.smk).

Layers, each importing only those before it: `settings` (JudgeSettings and the judge's
constants), `scores` (pure rules: prompt, reply, score), `backend` (what a backend is given and
reports), one module per backend (`openai`, `hf`), `registry` (backend name -> class), `job`
(the stage: read, judge, write), `cli` (`emflow judge`).
"""
