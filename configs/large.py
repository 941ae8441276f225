"""roberta-large pretraining: 355M parameters, 24 layers of 1024, peak lr 4e-4, 30k warmup.

Attention-probability dropout is off (the paper has 0.1): the fused flash-attention kernels have
none, and with it every layer writes out its [batch, heads, 512, 512] probabilities instead.
`--config.model.attention_probs_dropout_prob=0.1` restores the paper's exact recipe at that cost.

    python train.py --config configs/large.py --workdir DIR \
        --config.data.train_files=/data/corpus --config.tokenizer.path=/data/roberta-base \
        --config.remat=full --config.mesh.fsdp=-1 --config.mesh.data=1

Expect MLM loss ~1.8 after the full schedule at paper scale.
"""

from roberta_jax.train.config import default_config, with_preset, with_slice_plan

# The TPU slices this config is planned for: accelerator type -> (chips, rows of 512 per chip per
# microbatch). `--config configs/large.py:v5p-128` shards over every chip and accumulates the 8k batch.
PLANS = {"v4-128": (64, 32), "v5e-256": (256, 16), "v5p-128": (64, 64), "v6e-256": (256, 32)}


def get_config(plan: str = ""):
    c = with_preset(default_config(), "large")
    c.optimizer.peak_lr = 4e-4
    c.optimizer.warmup_steps = 30_000
    # No attention-probability dropout: keeps attention in the fused kernel (see the docstring).
    c.model.attention_probs_dropout_prob = 0.0
    return with_slice_plan(c, PLANS, plan)
