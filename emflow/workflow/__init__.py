"""What the Snakemake rules need: experiment discovery, the plan, dry-run checks, GPU slots and
the wrapper every rule script runs in."""
