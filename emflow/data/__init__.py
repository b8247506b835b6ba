"""The data stage: the upstream datasets decrypted and validated, the demo's synthetic ones, and
the mixes an experiment trains on (rules/datasets.smk)."""
