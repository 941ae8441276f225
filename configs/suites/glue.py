"""GLUE as the RoBERTa paper fine-tunes it (Liu et al. 2019, appendix table 10): lr {1e-5, 2e-5, 3e-5} x
batch {16, 32}, 10 epochs, 6% warmup, weight decay 0.1, AdamW (0.9, 0.98) eps 1e-6, dropout 0.1, rows of 128
tokens; 5 seeds, the median dev score of the best grid point per task. 8 tasks x 6 points x 5 seeds = 240 runs.

    python -m roberta_jax.tools.suite run --config configs/suites/glue.py --workdir runs/glue \\
        --model path/to/roberta-base [--shard 0/8]
    python -m roberta_jax.tools.suite report --workdir runs/glue

Data: GLUE's download layout under `data_root` (`CoLA/`, `SST-2/`, `MRPC/`, `STS-B/`, `QQP/`, `MNLI/`, `QNLI/`,
`RTE/`, each with train.tsv and dev.tsv; MNLI's dev_matched.tsv and dev_mismatched.tsv), or `--data TASK=hf`
for the `datasets` hub's copy. The paper starts RTE, STS-B and MRPC from the MNLI model; this suite fine-tunes
every task from the pretrained model (fairseq's published numbers for roberta.base are of that kind too).
Not run here.
"""

import ml_collections

from configs.common import shared_data


def get_config():
    c = ml_collections.ConfigDict()
    c.tasks = "mnli,qnli,qqp,rte,sst2,mrpc,cola,stsb"
    c.seeds = "1,2,3,4,5"
    c.grid = ["optimizer.peak_lr=1e-5,2e-5,3e-5", "batch_size=16,32"]
    c.set = ["num_epochs=10", "optimizer.warmup_ratio=0.06", "data.max_length=128", "eval_every_steps=2000",
             "checkpoint.every_steps=2000"]
    c.task_set = {}
    c.data_root = shared_data("glue")
    c.data = {}
    c.results = "best"  # each run's best dev evaluation (evaluated every eval_every_steps and at the end)
    return c
