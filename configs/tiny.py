"""A tiny RoBERTa pretrained on the demo corpus shipped in the repo (Tiny Shakespeare excerpt,
public domain): a few minutes on a 2-core CPU, the README's main command.

    python train.py --config configs/tiny.py --workdir runs/tiny

Trains a 4096-token byte-level BPE on the corpus, then a 4-layer, 128-wide model on rows of 128
tokens, 32 per step, for 300 steps (about 2 minutes on 2 cores). Expect the MLM loss to fall from
~8.3 (ln 4096) to ~6.1, eval loss ~6.2 and eval accuracy on masked tokens ~10% (the model has
learnt the corpus's word statistics; context takes far longer); the exported model lands in
WORKDIR/hf.
"""

from configs.common import DEMO_CORPUS
from roberta_jax.train.config import default_config, with_preset


def get_config():
    c = with_preset(default_config(), "tiny")
    # A few minutes of training is far from overfitting: dropout would only slow the fall.
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
    c.dtype = "float32"  # bfloat16 matmuls are slow on most CPUs
    c.tokenizer.vocab_size = 4096
    c.data.train_files = DEMO_CORPUS
    c.data.eval_fraction = 0.05
    c.data.max_seq_length = 128
    c.batch_size = 32
    c.total_steps = 300
    c.optimizer.peak_lr = 1e-3  # of 5e-4, 1e-3 and 2e-3, the lowest eval loss at step 300
    c.optimizer.warmup_steps = 30
    c.checkpoint.every_steps = 100
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.eval_batches = 10
    return c
