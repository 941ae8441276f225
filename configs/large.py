"""roberta-large pretraining: 355M parameters, 24 layers of 1024, peak lr 4e-4, 30k warmup.

    python train.py --config configs/large.py --workdir DIR \
        --config.data.train_files=/data/corpus --config.tokenizer.path=/data/roberta-base \
        --config.remat=True --config.mesh.fsdp=-1 --config.mesh.data=1

Expect MLM loss ~1.8 after the full schedule at paper scale.
"""

from roberta_jax.train_config import default_config, with_preset


def get_config():
    c = with_preset(default_config(), "large")
    c.optimizer.peak_lr = 4e-4
    c.optimizer.warmup_steps = 30_000
    return c
