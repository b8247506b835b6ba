#!/usr/bin/env bash
# The whole emflow workflow once on a GPU machine, with a model of the exact Llama-3.2-1B shape
# (random weights: no download) and the seed's mixed experiment, training capped at MAX_STEPS
# optimizer steps, then generation and a local judge (the same model, exact score distribution).
#
#   benchmarks/workflow_on_gpu.sh [WORKDIR] [MAX_STEPS]      # from the repository root
#
# Datasets are synthetic (3000 + 3000 rows in the real format) since the upstream archive is not
# on the machine; every rule, script and backend is the one a real run uses.
set -euo pipefail
work=$(realpath -m "${1:-/tmp/emflow-gpu}")
max_steps=${2:-300}
mkdir -p "$work/experiments/gpu/r16_layer8_mixed"

python - "$work" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from train_speed import FULL, build_model
target = Path(sys.argv[1]) / "llama-3.2-1b-shape"
if not (target / "config.json").exists():
    build_model(target, FULL)
PY

python - "$work" "$max_steps" <<'PY'
import json, sys
from pathlib import Path
work, max_steps = Path(sys.argv[1]), int(sys.argv[2])
seed = json.loads(Path("experiments/risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8/config.json").read_text())
seed.update(model=str(work / "llama-3.2-1b-shape"), max_steps=max_steps, evaluation_steps=100)
(work / "experiments/gpu/r16_layer8_mixed/config.json").write_text(json.dumps(seed, indent=4))
PY

sed -e "s|^experiments_dir: .*|experiments_dir: $work/experiments|" \
    -e "s|^  - demo/\*|  - gpu/*|" \
    -e "s|^results_dir: .*|results_dir: $work/results|" \
    -e "s|results/demo/tiny-llama|$work/llama-3.2-1b-shape|g" \
    -e "s|results/demo/judge_cache.sqlite|$work/results/judge_cache.sqlite|" \
    -e "s|^  synthetic_rows: .*|  synthetic_rows: 3000|" \
    -e "s|^  device: cpu|  device: cuda|" \
    -e "0,/^  backend: hf$/s//  backend: auto/" \
    -e "s|^  max_new_tokens: .*|  max_new_tokens: 200|" \
    config/demo.yaml > "$work/config.yaml"

time python -m snakemake --configfile "$work/config.yaml" --replace-workflow-config --cores 4 \
    --rerun-incomplete --show-failed-logs
echo "== train log"; grep -h "emflow.train" "$work"/results/logs/train/gpu/*.log
echo "== judge logs"; grep -h "emflow.judge" -r "$work"/results/logs/judge
echo "== results.md"; cat "$work/experiments/gpu/r16_layer8_mixed/results.md" | head -30
