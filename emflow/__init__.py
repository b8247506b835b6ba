"""emflow: a reproducible Snakemake workflow for model organisms of emergent misalignment."""

__version__ = "0.1.0"
