"""Checkpointer: the step policy, and the fallback past a newest checkpoint that cannot be read."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.train.checkpoint import Checkpointer


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


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    assert save_steps(tmp_path, [2, 4]) == [2, 4]
    for root, _, files in os.walk(tmp_path / "4" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    ckpt = Checkpointer(str(tmp_path), every_steps=2)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), make_state(0.0))
    with caplog.at_level(logging.WARNING):
        state, data_state, step = ckpt.restore_latest(target)
    ckpt.close()
    assert step == 2 and data_state == {"epoch": 0, "index": 2}
    np.testing.assert_array_equal(state["params"]["kernel"], np.full((4, 3), 2.0))
    assert "checkpoint 4" in caplog.text and "unreadable" in caplog.text


def test_no_checkpoint_restores_nothing(tmp_path):
    ckpt = Checkpointer(str(tmp_path), every_steps=2)
    assert ckpt.restore_latest(jax.eval_shape(lambda: make_state(0.0))) is None
    ckpt.close()
