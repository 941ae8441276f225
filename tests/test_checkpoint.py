"""Checkpointer: the step policy, and the fallback past a newest checkpoint that cannot be read."""

import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.train import workdir as workdir_files
from roberta_jax.train.checkpoint import Checkpointer, CheckpointError, load_params


def make_state(value: float) -> dict:
    return {"params": {"kernel": jnp.full((4, 3), value)}, "step": jnp.asarray(int(value), jnp.int32)}


def save_steps(directory, steps, every=2):
    ckpt = Checkpointer(str(directory), every_steps=every, keep=5)
    saved = [s for s in steps if ckpt.save(s, make_state(float(s)), {"epoch": 0, "index": s})]
    ckpt.close()
    return saved


def test_saves_exactly_the_multiples_of_every_steps_and_forced_ones(tmp_path):
    ckpt = Checkpointer(str(tmp_path), every_steps=2, keep=10)
    saved = [s for s in range(1, 6) if ckpt.save(s, make_state(float(s)), {}, force=s == 5)]
    ckpt.close()
    assert saved == [2, 4, 5]
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 4, 5]


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_its_step_saved_again(tmp_path, caplog):
    tmp_path = tmp_path / "checkpoints"
    assert save_steps(tmp_path, [2, 4]) == [2, 4]
    for root, _, files in os.walk(tmp_path / "4" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    ckpt = Checkpointer(str(tmp_path), every_steps=2)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), make_state(0.0))
    with caplog.at_level(logging.WARNING):
        state, data_state, step = ckpt.restore_latest(target)
    assert step == 2 and data_state == {"epoch": 0, "index": 2}
    np.testing.assert_array_equal(state["params"]["kernel"], np.full((4, 3), 2.0))
    [aside] = os.listdir(f"{tmp_path}.unreadable")  # kept for inspection, named in the log
    assert aside.startswith("4-") and f"checkpoint 4 in {tmp_path} is unreadable" in caplog.text
    assert os.path.join(f"{tmp_path}.unreadable", aside) in caplog.text
    # The resumed run reaches step 4 again and saves it (Orbax refused a step that already existed).
    assert ckpt.save(4, make_state(4.5), {"epoch": 0, "index": 4})
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), every_steps=2)
    state, _, step = ckpt.restore_latest(target)
    ckpt.close()
    assert step == 4
    np.testing.assert_array_equal(state["params"]["kernel"], np.full((4, 3), 4.5))


def test_a_failed_save_is_raised_at_once_with_the_directory_and_never_hangs(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(str(directory), every_steps=1)
    assert ckpt.save(1, make_state(1.0), {})
    ckpt.wait()
    shutil.rmtree(directory)
    directory.write_text("not a directory")  # as a read-only or vanished filesystem would
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=f"saving step 2 in {directory} failed: NotADirectoryError"):
        ckpt.save(2, make_state(2.0), {})
    ckpt.close()
    assert time.monotonic() - start < 30  # Orbax's background threads used to wait 5 minutes


def test_no_checkpoint_restores_nothing(tmp_path):
    ckpt = Checkpointer(str(tmp_path), every_steps=2)
    assert ckpt.restore_latest(jax.eval_shape(lambda: make_state(0.0))) is None
    ckpt.close()


def test_load_params_takes_the_newest_readable_checkpoint_and_leaves_the_workdir_alone(tmp_path):
    directory = tmp_path / workdir_files.CHECKPOINTS
    assert save_steps(directory, [2, 4]) == [2, 4]
    for root, _, files in os.walk(directory / "4" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    params, step = load_params(str(tmp_path))
    assert step == 2
    np.testing.assert_array_equal(params["kernel"], np.full((4, 3), 2.0))
    with pytest.raises(CheckpointError, match=f"checkpoint 4 in {directory} is unreadable"):
        load_params(str(tmp_path), step=4)
    assert sorted(os.listdir(directory)) == ["2", "4"]  # a reader moves nothing


def test_on_gs_an_uncommitted_step_is_never_restored_and_never_blocks_saving_it(bucket):
    """A save cut short on object storage (no rename there) leaves a step directory without Orbax's
    `commit_success.txt`: opening the checkpoints deletes it, the step before is restored, and the step is
    saved again. A corrupt committed one is moved aside, as on local disk."""
    from roberta_jax import storage

    directory = f"{bucket}/run/checkpoints"
    assert save_steps(directory, [2, 4]) == [2, 4]
    for name in storage.find(f"{directory}/4"):  # step 4's objects, as a kill mid-save leaves them
        if name.endswith("commit_success.txt"):
            storage.remove(name)
    ckpt = Checkpointer(directory, every_steps=2)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), make_state(0.0))
    state, data_state, step = ckpt.restore_latest(target)
    assert step == 2 and data_state == {"epoch": 0, "index": 2}
    np.testing.assert_array_equal(state["params"]["kernel"], np.full((4, 3), 2.0))
    assert "4" not in storage.listdir(directory)
    assert ckpt.save(4, make_state(4.0), {"epoch": 0, "index": 4})
    ckpt.close()
    assert storage.exists(f"{directory}/4/commit_success.txt")
    assert not storage.exists(f"{directory}.unreadable")
