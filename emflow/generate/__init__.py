"""The generate stage: answers of the base model and each adapter to the question sets, from a
local model (hf, fast) or an OpenAI-compatible endpoint (rules/generate.smk)."""
