"""train.py end to end on CPU: loss falls and exports, mesh shapes agree, config errors."""

import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from roberta_jax.tools import convert
from roberta_jax.train import checkpoint, cli, metrics
from roberta_jax.train import workdir as workdir_files
from tests.train_runs import losses, run_train


def test_tiny_run_loss_falls_and_exports(tmp_path, corpus):
    # The test's own learning rate: this 32-wide model takes a faster one than configs/tiny.py's.
    run_train(tmp_path, corpus, "--config.total_steps=40", "--config.eval_every_steps=40",
              "--config.optimizer.peak_lr=2e-3", "--config.export_hf=True")
    loss = losses(tmp_path)
    assert sorted(loss) == list(range(1, 41))
    assert abs(loss[1] - np.log(300)) < 0.5
    assert np.mean([loss[s] for s in range(36, 41)]) < loss[1] - 0.7
    record = metrics.read_metrics(str(tmp_path))[40]
    assert record["eval/perplexity"] == pytest.approx(np.exp(record["eval/loss"]), rel=1e-5)
    for key in ("train/mlm_accuracy", "train/learning_rate", "train/grad_norm", "train/param_norm",
                "perf/tokens_per_sec", "perf/step_time", "eval/accuracy"):
        assert key in record
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
    assert json.loads((tmp_path / workdir_files.TRAIN_CONFIG).read_text())["total_steps"] == 40
    hf_export = tmp_path / workdir_files.HF_EXPORT
    assert {"model.safetensors", "config.json", "vocab.json", "merges.txt"} <= set(os.listdir(hf_export))
    # The final checkpoint converts to the same HF weights as the export at the end of the run.
    converted_dir = tmp_path / "converted"
    convert.main(["to-hf", str(tmp_path), str(converted_dir)])
    exported, converted = (safetensors.numpy.load_file(d / "model.safetensors") for d in (hf_export, converted_dir))
    assert sorted(exported) == sorted(converted)
    for name in exported:
        np.testing.assert_array_equal(exported[name], converted[name])
    assert (converted_dir / "merges.txt").exists()


MESH_STEPS = ["--config.total_steps=4", "--config.checkpoint.every_steps=100", "--config.model.hidden_dropout_prob=0.1",
              "--config.model.attention_probs_dropout_prob=0.1"]


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory, corpus):
    workdir = tmp_path_factory.mktemp("one_device")
    run_train(workdir, corpus, *MESH_STEPS)
    return losses(workdir)


@pytest.mark.parametrize("mesh", [dict(data=8), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2)],
                         ids=["data8", "fsdp8", "data2_fsdp2_tensor2"])
def test_losses_agree_across_mesh_shapes(tmp_path, corpus, one_device_losses, mesh):
    run_train(tmp_path, corpus, *MESH_STEPS, *(f"--config.mesh.{k}={v}" for k, v in mesh.items()), devices=8)
    sharded = losses(tmp_path)
    assert sorted(sharded) == sorted(one_device_losses) == [1, 2, 3, 4]
    np.testing.assert_allclose([sharded[s] for s in range(1, 5)], [one_device_losses[s] for s in range(1, 5)],
                               atol=1e-5, rtol=0)


def test_a_checkpoint_restores_onto_another_mesh(tmp_path, corpus, one_device_losses):
    """Steps 1-2 on fsdp=8, steps 3-4 restored onto data=2 x fsdp=2 x tensor=2: the losses of one device."""
    run_train(tmp_path, corpus, *MESH_STEPS, "--config.total_steps=2", "--config.mesh.fsdp=8",
              "--config.mesh.data=1", devices=8)
    run_train(tmp_path, corpus, *MESH_STEPS, "--config.mesh.data=2", "--config.mesh.fsdp=2",
              "--config.mesh.tensor=2", devices=8)
    resumed = losses(tmp_path)
    assert sorted(resumed) == [1, 2, 3, 4]
    np.testing.assert_allclose([resumed[s] for s in range(1, 5)], [one_device_losses[s] for s in range(1, 5)],
                               atol=1e-5, rtol=0)


def test_unknown_config_key_names_the_nearest(tmp_path, corpus):
    out = run_train(tmp_path, corpus, "--config.optimiser.peak_lr=1e-4", succeeds=False)
    assert out.stderr.endswith("unknown config key 'optimiser'; did you mean 'optimizer'?\n")
    assert out.returncode == cli.EXIT_BAD_INPUT


def test_non_finite_run_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    # Step 1 trains at lr 0 (warmup), step 2 at 5e29 overflows the params; then every update is skipped.
    out = run_train(tmp_path, corpus, "--config.total_steps=30", "--config.optimizer.peak_lr=1e30",
                    "--config.optimizer.warmup_steps=2", "--config.max_nonfinite_steps=3",
                    "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=2", succeeds=False)
    assert out.returncode == cli.EXIT_FAILED
    assert "3 consecutive steps with non-finite loss or gradients" in out.stderr.splitlines()[-1]
    logged = metrics.read_metrics(str(tmp_path))
    assert np.isfinite(logged[1]["train/param_norm"]) and not np.isfinite(logged[2]["train/param_norm"])
    # Only step 1 was saved: the streak neither wrote bad checkpoints nor rotated the good one out.
    assert sorted(os.listdir(tmp_path / workdir_files.CHECKPOINTS)) == ["1"]
    params, step = checkpoint.load_params(str(tmp_path))
    assert step == 1 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_an_evaluation_that_scores_nothing_is_reported_as_such(tmp_path, corpus):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("To")  # one row of 3 tokens with <s> and </s>: round(0.15 x 1) = 0 masked
    out = run_train(tmp_path / "run", corpus, f"--config.data.eval_files={held_out}", "--config.data.eval_fraction=0",
                    "--config.total_steps=2", "--config.eval_every_steps=1")
    assert "step 2: the evaluation masked no token (1 held-out rows); no eval metrics" in out.stderr
    logged = metrics.read_metrics(str(tmp_path / "run"))
    assert sorted(logged) == [1, 2] and not any(k.startswith("eval/") for m in logged.values() for k in m)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"train/loss": round(logged[2]["train/loss"], 4)}
