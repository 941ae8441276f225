"""SQuAD v1.1 extractive QA from roberta-base: lr 1.5e-5, batch 48, 2 epochs, 6% warmup, weight decay
0.1, AdamW (0.9, 0.98) eps 1e-6, windows of 384 tokens sharing 128 (doc stride), answers of at most 30
tokens from the 20 best starts and ends of each window.

    python finetune.py --config configs/finetune/squad.py --workdir runs/squad \
        --config.init_from=path/to/roberta-base

Data: `../shared/data/squad/{train,dev}-v1.1.json` beside the repo (the official files; the shared
folder itself holds only `dev-v1.1-part.json`, which `bench/finetune_eval.py` splits by article).
About 3,700 steps. Not run here on the full recipe; published roberta-base results put dev exact match
near 86 and F1 near 92. Results go to `WORKDIR/eval_results.json`; `WORKDIR/best_hf` loads with
`AutoModelForQuestionAnswering`.
"""

from configs.common import shared_data
from roberta_jax.finetune.config import default_config


def get_config():
    c = default_config()
    c.task = "qa"
    c.data.train_file = shared_data("squad", "train-v1.1.json")
    c.data.eval_file = shared_data("squad", "dev-v1.1.json")
    c.data.max_length = 384
    c.data.doc_stride = 128
    c.batch_size = 48
    c.num_epochs = 2.0
    c.optimizer.peak_lr = 1.5e-5
    c.eval_every_steps = 1000
    c.checkpoint.every_steps = 1000
    c.best_metric = "f1"
    return c
