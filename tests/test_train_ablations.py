"""train.py with the paper's ablation options (DOC-SENTENCES rows with segment ids, static span masks):
an exact resume across epochs, onto another mesh with the same losses."""

import json

import numpy as np

from roberta_jax.train import workdir as workdir_files
from tests.train_runs import losses, run_train

# 256 rows of 32 tokens a step: the corpus's DOC-SENTENCES rows last about 4 steps, so the 8 steps read
# rows of a second epoch, masked again with their one static mask.
ABLATION = ["--config.data.input_format=doc_sentences", "--config.masking.span=True",
            "--config.masking.static_copies=1", "--config.batch_size=256", "--config.optimizer.total_steps=8",
            "--config.checkpoint.every_steps=4"]


def test_doc_sentences_with_static_span_masks_resume_exactly_onto_another_mesh(tmp_path, corpus):
    run_train(tmp_path / "straight", corpus, *ABLATION, "--config.total_steps=8")
    resumed = tmp_path / "resumed"
    run_train(resumed, corpus, *ABLATION, "--config.total_steps=4")
    run_train(resumed, corpus, *ABLATION, "--config.total_steps=8", "--config.mesh.data=2", "--config.mesh.fsdp=2",
              "--config.mesh.tensor=2", devices=8)
    data_state = json.loads((resumed / workdir_files.CHECKPOINTS / "8" / "data" / "metadata").read_text())
    assert data_state["epoch"] >= 1, data_state  # the last steps read rows a second time
    straight, again = losses(tmp_path / "straight"), losses(resumed)
    assert sorted(again) == sorted(straight) == list(range(1, 9))
    np.testing.assert_allclose([again[s] for s in straight], [straight[s] for s in straight], atol=1e-5, rtol=0)
