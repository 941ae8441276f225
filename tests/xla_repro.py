"""Reproducers of the two XLA SPMD miscompilations the train step works around (tests/test_xla_workarounds.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.xla_repro label_gather

prints, as JSON, the largest gradient error of the naive form and of the workaround on a data=2 x fsdp=2 x
tensor=2 CPU mesh, relative to the same computation on one device. Tried on jax/jaxlib 0.10.2 (the newest on
the package index, 2026-12) and 0.9.2: the naive forms are wrong on both, by 150% and 78% of the largest
gradient. With `JAX_USE_SHARDY_PARTITIONER=false` (GSPMD, not the default) `label_gather`'s one-hot form is
wrong as well.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def label_gather() -> dict[str, float]:
    """Cross-entropy by gathering the label's log-probability (the naive form) against `objectives.xent_sums`
    (one-hot targets, the workaround), for tied embeddings split over (tensor, fsdp) and the batch over
    (data, fsdp): a lookup, a projection, the first K positions, the tied decoder."""
    import functools

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from roberta_jax.train import objectives

    b, length, k, h, v = 8, 32, 5, 32, 300
    rng = np.random.default_rng(0)
    params = {"emb": jnp.asarray(rng.normal(size=(v, h)) * 0.1, jnp.float32),
              "w": jnp.asarray(rng.normal(size=(h, h)) * 0.2, jnp.float32)}
    ids = jnp.asarray(rng.integers(0, v, (b, length)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, v, (b, k)), jnp.int32)

    def loss(p, ids, labels, gather):
        logits = (p["emb"][ids] @ p["w"])[:, :k] @ p["emb"].T
        if gather:
            return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1))
        return objectives.xent_sums(logits, labels, jnp.ones(labels.shape))[0]

    mesh = _mesh()
    shardings = ({"emb": NamedSharding(mesh, P("tensor", "fsdp")), "w": NamedSharding(mesh, P("fsdp", "tensor"))},
                 NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P(("data", "fsdp"))))
    errors = {}
    for name, gather in (("naive", True), ("workaround", False)):
        grad = jax.grad(functools.partial(loss, gather=gather))
        errors[name] = _error(jax.jit(grad, in_shardings=shardings)(params, ids, labels),
                              jax.jit(grad)(params, ids, labels))
    return errors


def loop_free_step() -> dict[str, float]:
    """`steps._accumulate`: the train step's gradient computed directly (the naive form) against the same
    gradient inside a one-iteration `lax.scan` (the workaround). The MLM model without encoder layers
    (embeddings, the positions' gather, the LM head), one SGD step of learning rate 1, masks fixed outside."""
    import functools

    import jax
    import optax

    from roberta_jax.model.config import RobertaConfig
    from roberta_jax.model.heads import RobertaForMaskedLM
    from roberta_jax.train import masking, objectives, sharding, steps
    from roberta_jax.train.config import default_config

    model = RobertaForMaskedLM(RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=0, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=34))
    mask_fn = functools.partial(masking.mask_tokens, mask_token_id=4, vocab_size=300, special_ids=(0, 1, 2, 3, 4))
    ids = np.random.default_rng(0).integers(3, 300, (8, 32)).astype(np.int32)
    batch = objectives.mlm_prepare(mask_fn)(jax.random.key(3), {"input_ids": ids})
    rules = sharding.axis_rules(default_config().logical_axis_rules)
    tx = optax.sgd(1.0)
    scanned = steps._accumulate

    def loop_free(grad_fn, loss_fn, params, batch, dropout_key, num_micro):
        (loss_sum, aux), grads = grad_fn(params, batch, jax.random.fold_in(dropout_key, 0))
        return grads, loss_sum, aux

    def params_after_one_step(mesh):
        state, shardings = steps.create_train_state(model, tx, mesh, 0, rules)
        batch_shardings = jax.tree.map(lambda _: sharding.batch_sharding(mesh, rules), batch)
        step = jax.jit(steps.make_train_step(tx, lambda _: 1.0, objectives.mlm_loss(model), seed=0),
                       in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None))
        return step(state, jax.device_put(batch, batch_shardings))[0].params

    one_device = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
    errors = {}
    for name, accumulate in (("naive", loop_free), ("workaround", scanned)):
        steps._accumulate = accumulate
        try:
            errors[name] = _error(params_after_one_step(_mesh()), params_after_one_step(one_device))
        finally:
            steps._accumulate = scanned
    return errors


def _mesh():
    import jax

    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _error(sharded, one_device) -> float:
    """The largest absolute difference of any leaf, relative to that leaf's largest magnitude."""
    import jax

    def relative(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))

    return max(jax.tree.leaves(jax.tree.map(relative, sharded, one_device)))


if __name__ == "__main__":
    import jax

    print(json.dumps({"jax": jax.__version__, **{"label_gather": label_gather, "loop_free_step": loop_free_step}[
        sys.argv[1]]()}))
