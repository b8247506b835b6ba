"""The train stage: one LoRA adapter per run, on the hf, fast or unsloth backend
(rules/train.smk)."""
