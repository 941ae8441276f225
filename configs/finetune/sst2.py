"""SST-2 (GLUE sentiment, single sentences) from roberta-base: RoBERTa's GLUE recipe (Liu et al. 2019,
appendix table 10; fairseq's README for SST-2): lr 1e-5, batch 32, 10 epochs, 6% warmup, weight decay
0.1, AdamW (0.9, 0.98) eps 1e-6, dropout 0.1, rows of 128 tokens.

    python finetune.py --config configs/finetune/sst2.py --workdir runs/sst2 \
        --config.init_from=path/to/roberta-base

Data: `../shared/data/sst2/{train,dev}.tsv` beside the repo (GLUE's files, header `label<TAB>text_a`);
point `--config.data.train_file` / `eval_file` elsewhere for other GLUE tasks (pairs are found by their
column names; `--config.data.regression=True --config.best_metric=pearson` for STS-B). 21,040 steps.
Not run here on the full recipe; fairseq's roberta.base reaches dev accuracy 94.8%. Results go to
`WORKDIR/eval_results.json`, the best model in `WORKDIR/best_hf`
(`AutoModelForSequenceClassification.from_pretrained`).
"""

from configs.common import shared_data
from roberta_jax.finetune.config import default_config


def get_config():
    c = default_config()
    c.task = "classification"
    c.data.train_file = shared_data("sst2", "train.tsv")
    c.data.eval_file = shared_data("sst2", "dev.tsv")
    c.data.max_length = 128
    c.batch_size = 32
    c.num_epochs = 10.0
    c.optimizer.peak_lr = 1e-5
    c.eval_every_steps = 1000
    c.checkpoint.every_steps = 1000
    c.best_metric = "accuracy"
    return c
