"""RoBERTa pretraining: `python train.py --config configs/base.py --workdir DIR`.

Any config field can be overridden (`--config.optimizer.peak_lr=4e-4`). The run itself is
`roberta_jax.train.pretrain.train_and_evaluate`; this file only parses the flags.
"""

import json

from absl import flags
from ml_collections import config_flags

from roberta_jax.finetune.probe import probe_callbacks
from roberta_jax.train import cli, pretrain

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "training config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "where checkpoints, logs and the exported model go")


def main(argv):
    del argv
    cli.quiet_libraries()
    # The downstream probes (`config.probes`) fine-tune with finetune's tasks, a layer above pretraining.
    final = pretrain.train_and_evaluate(_CONFIG.value, _WORKDIR.value, make_callbacks=probe_callbacks)
    shown = ("train/loss", "eval/", "downstream/")
    print(json.dumps({k: round(v, 4) for k, v in final.items() if k.startswith(shown)}))


if __name__ == "__main__":
    cli.run(main)
