"""configs/tiny.py with a downstream probe: SST-2 fine-tuned from the model being pretrained, every 150 steps.

    python train.py --config configs/tiny_probes.py --workdir runs/tiny_probes

At steps 150 and 300 a copy of the encoder under a fresh classification head is fine-tuned for 100 steps of 16
SST-2 sentences (rows of 48 tokens: most of SST-2's sentences are shorter) and scored on the 872 dev sentences:
`downstream/sst2/accuracy`, `f1`, `matthews_correlation` and `loss` in TensorBoard and metrics.jsonl,
`perf/probe_seconds/sst2` beside them. The pretraining losses are the same as configs/tiny.py's.
`--config.probes.tasks.sst2.mode=linear` trains the head only, on frozen features;
`--config.probes.every_steps=0` turns the probe off.

Data: `../shared/data/sst2/{train,dev}.tsv` beside the repo (GLUE's files), else the six-sentence fixture of
the tests (enough to see it run, not to measure anything).
"""

import os

from configs import tiny
from configs.common import REPO, shared_data
from roberta_jax.train.config import probe_task

FIXTURE = os.path.join(REPO, "tests", "data", "tasks", "sst2.tsv")


def get_config():
    c = tiny.get_config()
    shared = os.path.exists(shared_data("sst2", "train.tsv"))
    c.probes.every_steps = 150
    probe_task(c, "sst2", task="classification",
               train_file=shared_data("sst2", "train.tsv") if shared else FIXTURE,
               eval_file=shared_data("sst2", "dev.tsv") if shared else FIXTURE,
               steps=100, mode="finetune", lr=5e-4, batch_size=16, max_seq_length=48)
    return c
