"""A downstream suite for a CPU: SST-2 and CoNLL-2003 on subsets, a few hundred steps each, 3 seeds; for
ranking tiny pretraining runs (configs/tiny.py sizes) against each other and against their random init.

    python -m roberta_jax.tools.suite run --config configs/suites/tiny_cpu.py --workdir runs/suite_tiny \\
        --model runs/tiny            # or random:runs/tiny, the baseline
    python -m roberta_jax.tools.suite report --workdir runs/suite_tiny

Data: `../shared/data/sst2` (GLUE SST-2: 4,000 training sentences, the whole 872-sentence dev set) and
`../shared/data/conll2003` (2,000 training sentences, the first 1,000 of valid.txt), rows of 64 tokens,
batch 16, 200 steps (0.8 and 1.6 passes), lr 1e-4 (a tiny model wants more than roberta-base's 1e-5 to
5e-5). bench/downstream_cpu.sh runs it (with fewer steps where the CPU is shared).
"""

import ml_collections

from configs.common import shared_data


def get_config(arg: str = ""):
    """`tiny_cpu.py:sst2` (or `:conll`) keeps one of the two tasks."""
    c = ml_collections.ConfigDict()
    if arg not in ("", "sst2", "conll"):
        raise ValueError(f"tiny_cpu.py: unknown variant {arg!r}; use '', 'sst2' or 'conll'")
    c.tasks = arg or "sst2,conll"
    c.seeds = "1,2,3"
    c.grid = []
    c.set = ["total_steps=200", "batch_size=16", "data.max_length=64", "optimizer.peak_lr=1e-4",
             "eval_every_steps=200", "checkpoint.every_steps=200", "log_every_steps=50", "eval_batch_size=64"]
    c.task_set = {"sst2": ["data.max_train_examples=4000"],
                  "conll": ["data.max_train_examples=2000", "data.max_eval_examples=1000"]}
    c.data_root = shared_data()
    c.data = {"sst2": shared_data("sst2"), "conll": shared_data("conll2003")}
    c.results = "final"  # the one evaluation at the end
    return c
