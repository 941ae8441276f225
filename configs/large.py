"""roberta-large pretraining: 355M parameters, 24 layers of 1024, peak lr 4e-4, 30k warmup.

Attention-probability dropout is off (the paper has 0.1): the fused flash-attention kernels have
none, and with it every layer writes out its [batch, heads, 512, 512] probabilities instead.
`--config.model.attention_probs_dropout_prob=0.1` restores the paper's exact recipe at that cost.

Planned for these TPU slices (`PLANS`; `--config configs/large.py:v5p-128` picks one: FSDP over every
chip, the 8k batch as microbatches of chips x rows), per chip from the train step compiled for each slice
from a CPU host (`python bench/tpu_plans.py --configs configs/large.py`; splash attention, no remat, which
none of them needs). Rows per chip leave half of HBM or more free; temporaries are against the activations
the backward pass must keep:

    slice     chips x rows x accumulation  temporaries          per chip / HBM    roofline bound
    v4-128    64 x 32 x 4                  14.58 GiB (1.14x)    15.0 / 32 GiB     80,512 tokens/s per chip
    v5e-256   256 x 16 x 2                  6.24 GiB (0.98x)     6.7 / 16 GiB     57,225
    v5p-128   64 x 64 x 2                  27.92 GiB (1.09x)    28.4 / 95 GiB     225,912
    v6e-256   256 x 32 x 1                 14.36 GiB (1.13x)    14.7 / 32 GiB     104,064

    python train.py --config configs/large.py:v5p-128 --workdir DIR \
        --config.data.train_files=/data/corpus --config.tokenizer.path=/data/roberta-base

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
