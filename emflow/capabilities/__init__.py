"""Capability checks beside the EM numbers: EleutherAI lm-evaluation-harness tasks run on each
target emflow evaluates (the base model, a run's LoRA adapter, optionally at a LoRA scale)."""
