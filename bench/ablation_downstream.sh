#!/usr/bin/env bash
# Table 1 of the RoBERTa paper (static against dynamic masking) at the tiny size with the downstream column:
# two configs/tiny.py runs on the demo corpus, each then fine-tuned on the tiny_cpu suite's SST-2 (3 seeds),
# and `sweep compare` with the eval MLM loss and the SST-2 median side by side. Run from the repository root
# with ../shared/data beside it (or DATA=...): bash bench/ablation_downstream.sh [STEPS [FT_STEPS]]
set -euo pipefail
STEPS=${1:-100}
FT_STEPS=${2:-200}
PY=${PYTHON:-python}
DATA=${DATA:-../shared/data}
nice -n 10 $PY -m roberta_jax.tools.sweep run --config configs/tiny.py --workdir runs/ablations_downstream \
    --grid masking.static_copies=0,1 --set total_steps="$STEPS" --set optimizer.warmup_steps=$((STEPS / 10)) \
    --set eval_every_steps="$STEPS" --set checkpoint.every_steps="$STEPS" --set progress=False \
    --set export_hf=False --suite configs/suites/tiny_cpu.py:sst2 --suite-data "sst2=$DATA/sst2" \
    --suite-set total_steps="$FT_STEPS" --suite-set eval_every_steps="$FT_STEPS" \
    --suite-set checkpoint.every_steps="$FT_STEPS" --suite-set compilation_cache_dir="$PWD/runs/jax_cache"
$PY -m roberta_jax.tools.sweep compare --workdir runs/ablations_downstream --metric eval/loss
