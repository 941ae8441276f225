"""CoNLL-2003 English NER from roberta-base (token classification, entity F1 by seqeval): lr 5e-5,
batch 32, 3 epochs, 6% warmup, weight decay 0.1, AdamW (0.9, 0.98) eps 1e-6, rows of 128 tokens
(each word labelled on its first sub-word).

    python finetune.py --config configs/finetune/conll.py --workdir runs/conll \
        --config.init_from=path/to/roberta-base

Data: `../shared/data/conll2003/{train,valid}.txt` beside the repo (two columns, token and IOB2 tag).
1,314 steps. Not run here on the full recipe; published roberta-base results put dev entity F1 near 95
(test near 92). Results go to `WORKDIR/eval_results.json`; `WORKDIR/best_hf` loads with
`AutoModelForTokenClassification` and its config carries the tag names (`id2label`).
"""

from configs.common import shared_data
from roberta_jax.finetune.config import default_config


def get_config():
    c = default_config()
    c.task = "ner"
    c.data.train_file = shared_data("conll2003", "train.txt")
    c.data.eval_file = shared_data("conll2003", "valid.txt")
    c.data.max_length = 128
    c.batch_size = 32
    c.num_epochs = 3.0
    c.optimizer.peak_lr = 5e-5
    c.eval_every_steps = 400
    c.checkpoint.every_steps = 400
    c.best_metric = "f1"
    return c
