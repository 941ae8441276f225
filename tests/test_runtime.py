"""The runtime the entry points share: the workdir's config record, evaluation over batches, the HF export."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from roberta_jax.model import hf_io
from roberta_jax.model.config import preset
from roberta_jax.model.heads import RobertaForMaskedLM, init_params
from roberta_jax.train import runtime
from roberta_jax.train import workdir as workdir_files
from roberta_jax.train.config import default_config


def test_write_record_records_the_resolved_config(tmp_path):
    config = ml_collections.ConfigDict(dict(seed=3, optimizer=dict(peak_lr=1e-4)))
    runtime.write_record(str(tmp_path), config, workdir_files.TRAIN_CONFIG)
    assert json.loads((tmp_path / workdir_files.TRAIN_CONFIG).read_text()) == {
        "optimizer": {"peak_lr": 1e-4}, "seed": 3}
    assert os.listdir(tmp_path) == [workdir_files.TRAIN_CONFIG]


def eval_step(params, batch, batch_index):
    """A stand-in for a compiled eval step: sums of the batch's `x`, and the batch as its output."""
    assert batch["x"].sharding.spec == P(("data", "fsdp"))  # `Runtime.put` split it over the batch axes
    x = batch["x"]
    sums = {"loss_sum": params["w"] * jnp.sum(x), "count": jnp.float32(x.shape[0]), "correct": jnp.sum(x % 2 == 0)}
    return sums, {"index": batch_index, "x": x}


def test_evaluate_sums_over_the_batches_up_to_max_batches(tmp_path):
    # Rows of 8 split over the default mesh (data=-1): any device count up to 8 divides them.
    xs = [np.arange(8, dtype=np.float32) + 10 * i for i in range(4)]
    pulled = []

    def batches():
        for x in xs:
            pulled.append(len(pulled))
            yield {"x": x}

    params = {"w": jnp.float32(0.5)}
    with runtime.Runtime(default_config(), str(tmp_path), workdir_files.TRAIN_CONFIG) as rt:
        sums, outputs = rt.evaluate(eval_step, params, batches())
        assert sums == {"loss_sum": 0.5 * float(np.sum(xs)), "count": 32.0, "correct": 16.0}
        assert [o["index"] for o in outputs] == [0, 1, 2, 3]
        np.testing.assert_array_equal(outputs[2]["x"], xs[2])

        pulled.clear()
        sums, outputs = rt.evaluate(eval_step, params, batches(), max_batches=2)
        assert sums == {"loss_sum": 0.5 * float(np.sum(xs[:2])), "count": 16.0, "correct": 8.0}
        assert len(outputs) == 2 and pulled == [0, 1]  # the third batch is never read
        assert os.path.isfile(tmp_path / workdir_files.LOCK)
    # The config is recorded when training starts, and the lock goes with the run.
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def tiny_mlm():
    model = RobertaForMaskedLM(preset("micro"))
    return model, init_params(model, jax.random.key(0))


def hf_embedding(directory) -> np.ndarray:
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(directory)
    assert type(hf_model).__name__ == "RobertaForMaskedLM"
    return hf_model.roberta.embeddings.word_embeddings.weight.detach().numpy()


def test_export_hf_replaces_the_previous_export_whole(tmp_path, tiny_mlm):
    model, params = tiny_mlm
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    (tmp_path / "hf.partial").mkdir()  # left by an export that was interrupted
    (tmp_path / "hf.partial" / "junk").write_text("")

    runtime.export_hf(str(out), model, params)
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    assert sorted(os.listdir(out)) == ["config.json", hf_io.SAFETENSORS]
    embedding = params["roberta"]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(hf_embedding(out), embedding)

    shifted = jax.tree.map(lambda x: x + 1.0, params)
    runtime.export_hf(str(out), model, shifted)
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    np.testing.assert_array_equal(hf_embedding(out), embedding + 1.0)


def test_an_interrupted_export_leaves_the_previous_one_whole(tmp_path, tiny_mlm, monkeypatch):
    model, params = tiny_mlm
    out = tmp_path / "hf"
    runtime.export_hf(str(out), model, params)

    def interrupted(directory, *_args, **_kwargs):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, hf_io.SAFETENSORS), "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_io, "save_hf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runtime.export_hf(str(out), model, jax.tree.map(lambda x: x + 1.0, params))
    np.testing.assert_array_equal(hf_embedding(out), params["roberta"]["embeddings"]["word_embeddings"]["embedding"])
