"""The judge stage: every answer scored per metric by an LLM judge (rules/judge.smk)."""
