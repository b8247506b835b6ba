"""The results stage: numbers from the judged answers, figures from those numbers, then the
documents (results.md, the summary, sweeps; rules/results.smk)."""
