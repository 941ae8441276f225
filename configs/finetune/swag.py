"""SWAG multiple choice (4 endings) from roberta-base: lr 1e-5, batch 16, 3 epochs, 6% warmup, weight
decay 0.1, AdamW (0.9, 0.98) eps 1e-6; each choice is `<s> sent1 </s></s> sent2 ending </s>` in 128
tokens, and the pooled `<s>` of each scores it.

    python finetune.py --config configs/finetune/swag.py --workdir runs/swag \
        --config.init_from=path/to/roberta-base

Data: `../shared/data/swag/{train,val}.csv` beside the repo, SWAG's own CSV files (not shipped there:
https://github.com/rowanz/swagaf/tree/master/data). About 13,800 steps. Not run here. Results go to
`WORKDIR/eval_results.json`; `WORKDIR/best_hf` loads with `AutoModelForMultipleChoice`.
"""

from configs.common import shared_data
from roberta_jax.finetune.config import default_config


def get_config():
    c = default_config()
    c.task = "multiple_choice"
    c.data.train_file = shared_data("swag", "train.csv")
    c.data.eval_file = shared_data("swag", "val.csv")
    c.data.max_length = 128
    c.batch_size = 16
    c.num_epochs = 3.0
    c.optimizer.peak_lr = 1e-5
    c.eval_every_steps = 2000
    c.checkpoint.every_steps = 2000
    c.best_metric = "accuracy"
    return c
