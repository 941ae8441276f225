#!/usr/bin/env bash
# The CPU downstream table of the README: a tiny RoBERTa pretrained on WikiText-2 (test split, 1.3 MB) and Tiny
# Shakespeare (1.1 MB), a document per line, for a fixed number of steps, then configs/suites/tiny_cpu.py (SST-2
# and CoNLL-2003 subsets, 3 seeds) fine-tuned from it and from a random init of the same architecture and
# tokenizer, at batch 32 and lr 3e-4. Run from the repository root with ../shared/data beside it (or
# DATA=/path/to/shared/data): bash bench/downstream_cpu.sh [STEPS [FT_STEPS]] (pretraining steps, default 1000;
# fine-tuning steps per run, default 400).
set -euo pipefail
STEPS=${1:-1000}
FT_STEPS=${2:-400}
PY=${PYTHON:-python}
DATA=${DATA:-../shared/data}
SUITE_DATA=(--data "sst2=$DATA/sst2" --data "conll=$DATA/conll2003" --set batch_size=32 --set optimizer.peak_lr=3e-4)
if [[ -n $FT_STEPS ]]; then
    SUITE_DATA+=(--set "total_steps=$FT_STEPS" --set "eval_every_steps=$FT_STEPS" --set "checkpoint.every_steps=$FT_STEPS")
fi
# The suite's runs of one task differ in their seed alone: a compilation cache spares the recompiles.
SUITE_DATA+=(--set "compilation_cache_dir=$PWD/runs/jax_cache")
[[ -d runs/wt2_tiny/hf ]] || nice -n 10 $PY train.py --config configs/tiny.py --workdir runs/wt2_tiny \
    --config.data.train_files="$DATA/corpus/wikitext2-test.raw,$DATA/corpus/tinyshakespeare.txt" --config.total_steps="$STEPS" \
    --config.optimizer.warmup_steps=$((STEPS / 10)) --config.eval_every_steps=$((STEPS / 2)) \
    --config.checkpoint.every_steps=$((STEPS / 2)) --config.progress=False --config.data.doc_split=line
nice -n 10 $PY -m roberta_jax.tools.suite run --config configs/suites/tiny_cpu.py --workdir runs/suite_wt2 \
    --model runs/wt2_tiny "${SUITE_DATA[@]}"
nice -n 10 $PY -m roberta_jax.tools.suite run --config configs/suites/tiny_cpu.py --workdir runs/suite_wt2_random \
    --model random:runs/wt2_tiny "${SUITE_DATA[@]}"
