"""The compiled train and eval steps: accumulation, skipped non-finite updates, sharded state creation,
fixed eval masks; and the optimizer they step with."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from roberta_jax.model.config import preset
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.train import masking, objectives, optimizer, sharding, steps
from roberta_jax.train.config import default_config

CONFIG = preset("micro", vocab_size=101, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MASK_FN = functools.partial(masking.mask_tokens, mask_token_id=100, vocab_size=101, special_ids=(0, 1, 2, 3))
OPT = ml_collections.ConfigDict(dict(peak_lr=3e-3, warmup_steps=2, total_steps=1000, end_lr=0.0, b1=0.9, b2=0.98,
                                     eps=1e-6, weight_decay=0.01, grad_clip_norm=0.0))
RULES = sharding.axis_rules(default_config().logical_axis_rules)


def setup(num_micro=1, model=None):
    model = model or RobertaForMaskedLM(CONFIG)
    tx, schedule = optimizer.make_optimizer(OPT)
    mesh = sharding.make_mesh({"data": -1})
    state, _ = steps.create_train_state(model, tx, mesh, seed=0, rules=RULES)
    step = jax.jit(steps.make_train_step(
        tx, schedule, objectives.mlm_loss(model), seed=0, num_micro=num_micro,
        prepare=objectives.mlm_prepare(MASK_FN), accuracy_name="mlm_accuracy",
    ))
    return state, step


def batch(seed=0):
    ids = np.random.default_rng(seed).integers(4, 100, (8, 24)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids)}


def test_accumulation_gives_the_same_step_as_one_big_batch():
    (s1, step1), (s4, step4) = setup(1), setup(4)
    for i in range(3):
        s1, m1 = step1(s1, batch(i))
        s4, m4 = step4(s4, batch(i))
        np.testing.assert_allclose(m1["train/loss"], m4["train/loss"], rtol=1e-5)
        np.testing.assert_allclose(m1["train/grad_norm"], m4["train/grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1.params, s4.params)


def test_loss_starts_at_log_vocab_and_falls_on_a_learnable_batch():
    state, step = setup()
    # Each row counts up from a random start: every masked token follows from its neighbours.
    starts = np.random.default_rng(0).integers(0, 96, (8, 1))
    ids = ((starts + np.arange(24)) % 96 + 4).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    counting = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids)}
    losses = []
    for _ in range(20):
        state, m = step(state, counting)
        losses.append(float(m["train/loss"]))
    assert abs(losses[0] - np.log(101)) < 0.3
    assert losses[-1] < losses[0] - 0.3
    assert int(state.step) == 20 and float(m["train/num_predictions"]) == 8 * round(0.15 * 22)


def test_non_finite_update_is_skipped_and_counted():
    state, step = setup()
    bad = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.params))
    new, m = step(bad, batch())
    assert not np.isfinite(float(m["train/loss"]))
    assert int(m["train/nonfinite_streak"]) == 1 and int(m["train/skipped_updates"]) == 1 and int(new.step) == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), new.params, bad.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), new.opt_state, state.opt_state)
    _, m = step(new, batch())
    assert int(m["train/nonfinite_streak"]) == 2
    _, m = step(state, batch())
    assert int(m["train/nonfinite_streak"]) == 0 and int(m["train/skipped_updates"]) == 0


def test_state_and_adam_moments_are_sharded_by_the_rules():
    tx, _ = optimizer.make_optimizer(OPT)
    mesh = jax.sharding.Mesh([[[jax.devices()[0]]]], sharding.MESH_AXES)  # one device shows the table itself

    def query_kernel_specs(rules):
        _, shardings = steps.create_train_state(RobertaForMaskedLM(CONFIG), tx, mesh, seed=0, rules=rules)
        paths = {jax.tree_util.keystr(path): leaf.spec for path, leaf in jax.tree_util.tree_leaves_with_path(shardings)}
        return {path: spec for path, spec in paths.items()
                if path.endswith("['layer_0']['attention']['self']['query']['kernel']")}

    # The params and Adam's two moments (mu, nu), all [embed, heads].
    specs = query_kernel_specs(RULES)
    assert len(specs) == 3 and set(specs.values()) == {P("fsdp", "tensor")}
    no_fsdp = sharding.axis_rules([(name, None if name == "embed" else axes) for name, axes in RULES])
    assert set(query_kernel_specs(no_fsdp).values()) == {P(None, "tensor")}


def test_eval_masks_are_fixed_by_the_batch_index():
    state, _ = setup()
    model = RobertaForMaskedLM(CONFIG)
    eval_step = jax.jit(steps.make_eval_step(objectives.mlm_loss(model), seed=1,
                                             prepare=objectives.mlm_prepare(MASK_FN)))
    (sums, outputs), (again, _), (other, _) = (eval_step(state.params, batch(), i) for i in (0, 0, 1))
    assert outputs == {} and set(sums) == {"loss_sum", "count", "correct"}
    assert float(sums["count"]) == 8 * round(0.15 * 22)  # the 22 tokens between <s> and </s>
    assert abs(float(sums["loss_sum"]) / float(sums["count"]) - np.log(101)) < 0.3
    assert float(again["loss_sum"]) == float(sums["loss_sum"])
    assert float(other["loss_sum"]) != float(sums["loss_sum"])


def test_schedule_warms_up_then_decays_linearly():
    schedule = optimizer.learning_rate_schedule(1.0, warmup_steps=10, total_steps=110)
    np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 60, 110)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_polynomial_schedule_is_fairseqs_polynomial_decay():
    peak, end, warmup, total, power = 1.0, 0.1, 10, 110, 2.0
    schedule = optimizer.learning_rate_schedule(peak, warmup, total, end, schedule="polynomial", power=power)
    steps_ = np.array([0, 5, 10, 35, 60, 109, 110, 200])
    # fairseq polynomial_decay: warmup lr * step / warmup, then (peak - end) * (1 - t)^power + end.
    t = np.clip((steps_ - warmup) / (total - warmup), 0.0, 1.0)
    expected = np.where(steps_ < warmup, peak * steps_ / warmup, (peak - end) * (1 - t) ** power + end)
    np.testing.assert_allclose([schedule(s) for s in steps_], expected, rtol=1e-6)
    linear = optimizer.learning_rate_schedule(peak, warmup, total, end)
    power_one = optimizer.learning_rate_schedule(peak, warmup, total, end, schedule="polynomial", power=1.0)
    np.testing.assert_allclose([power_one(s) for s in steps_], [linear(s) for s in steps_], rtol=1e-6)


def test_unknown_schedule_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match=r"optimizer.schedule='cosine'; expected one of \('linear', 'polynomial'\)"):
        optimizer.learning_rate_schedule(1.0, 10, 100, schedule="cosine")


@pytest.mark.parametrize("scale", [10.0, 0.5])
def test_grad_clip_norm_clips_the_global_norm_before_adam(scale):
    clip = 2.0
    tx, _ = optimizer.make_optimizer(ml_collections.ConfigDict(dict(OPT, grad_clip_norm=clip)))
    params = {"a": jnp.ones((3,)), "b": jnp.ones((2, 2))}
    direction = {"a": jnp.array([1.0, 2.0, 2.0]), "b": jnp.array([[0.0, 4.0], [0.0, 0.0]])}  # norm 5
    grads = jax.tree.map(lambda g: g * scale * clip / 5.0, direction)  # global norm scale * clip
    _, state = tx.update(grads, tx.init(params), params)
    first_moment = state[1][0].mu  # chain(clip, adamw): adamw's scale_by_adam state
    clipped = jax.tree.map(lambda g: g * min(1.0, 1.0 / scale), grads)
    jax.tree.map(lambda m, g: np.testing.assert_allclose(m, (1 - OPT.b1) * g, rtol=1e-6), first_moment, clipped)


def test_no_weight_decay_on_biases_and_layer_norms():
    state, _ = setup()
    mask = optimizer.decay_mask(state.params)
    layer = mask["roberta"]["encoder"]["layer_0"]
    assert layer["attention"]["self"]["query"]["kernel"] and not layer["attention"]["self"]["query"]["bias"]
    assert not layer["output"]["LayerNorm"]["scale"] and mask["roberta"]["embeddings"]["word_embeddings"]["embedding"]
