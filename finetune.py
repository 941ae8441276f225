"""RoBERTa fine-tuning: `python finetune.py --config configs/finetune/sst2.py --workdir DIR --config.init_from=...`.

Any config field can be overridden (`--config.optimizer.peak_lr=2e-5`). The run itself is
`roberta_jax.finetune.run.finetune_and_evaluate`; this file only parses the flags.
"""

import json

from absl import flags
from ml_collections import config_flags

from roberta_jax.finetune import run
from roberta_jax.train import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "fine-tuning config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs, best_hf/ and eval_results.json go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    cli.quiet_libraries()
    results = run.finetune_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(json.dumps({k: results[k] for k in ("best_metric", "best_step", "best", "final_step", "final")}, indent=1))


if __name__ == "__main__":
    cli.run(main)
