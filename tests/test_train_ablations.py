"""train.py with the paper's ablation options (static and span masking, no cross-document attention):
exact resume across epochs of static masks, onto another mesh with the same losses."""

import json

import numpy as np

from roberta_jax.train import workdir as workdir_files
from tests.train_runs import losses, run_train

# 256 of the corpus's 906 rows of 32 tokens per step: 3 steps an epoch, so 8 steps go through both static
# copies and back to the first.
ABLATION = ["--config.data.cross_document_attention=False", "--config.masking.span=True",
            "--config.masking.static_copies=2", "--config.batch_size=256", "--config.optimizer.total_steps=8",
            "--config.checkpoint.every_steps=4"]


def test_static_span_and_segment_runs_resume_exactly_onto_another_mesh(tmp_path, corpus):
    run_train(tmp_path / "straight", corpus, *ABLATION, "--config.total_steps=8")
    resumed = tmp_path / "resumed"
    run_train(resumed, corpus, *ABLATION, "--config.total_steps=4")
    run_train(resumed, corpus, *ABLATION, "--config.total_steps=8", "--config.mesh.data=2", "--config.mesh.fsdp=2",
              "--config.mesh.tensor=2", devices=8)
    data_state = json.loads((resumed / workdir_files.CHECKPOINTS / "8" / "data" / "metadata").read_text())
    assert data_state["epoch"] >= 2  # the last steps read static copy 0 again
    straight, again = losses(tmp_path / "straight"), losses(resumed)
    assert sorted(again) == sorted(straight) == list(range(1, 9))
    np.testing.assert_allclose([again[s] for s in straight], [straight[s] for s in straight], atol=1e-5, rtol=0)
