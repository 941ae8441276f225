"""Properties of the Flax modules that do not need a reference implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.model.attention import attention_implementation
from roberta_jax.model.config import preset
from roberta_jax.model.heads import (
    RobertaForCausalLM,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    init_params,
)
from roberta_jax.model.layers import position_ids_from_input_ids

CONFIG = preset("micro", vocab_size=97, max_position_embeddings=34)


def padded_batch(seed=0):
    """Rows of lengths 32, 20 and 5, right-padded with <pad>=1; ids [3, 32], mask [3, 32]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, CONFIG.vocab_size, (3, 32))
    mask = np.arange(32)[None] < np.array([32, 20, 5])[:, None]
    return jnp.asarray(np.where(mask, ids, 1)), jnp.asarray(mask.astype(np.int32))


@pytest.fixture(scope="module")
def mlm():
    model = RobertaForMaskedLM(CONFIG)
    return model, init_params(model, jax.random.key(0))


def test_position_ids_count_from_pad_plus_one_and_skip_padding():
    ids = jnp.array([[0, 7, 8, 2, 1, 1], [0, 9, 2, 1, 1, 1]])
    np.testing.assert_array_equal(
        position_ids_from_input_ids(ids, 1), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]]
    )


def test_padding_is_inert(mlm):
    model, params = mlm
    ids, mask = padded_batch()
    real = np.asarray(mask, bool)
    base = model.apply({"params": params}, ids, mask)
    # Any ids at padded positions: the mask keeps them out of every real position's output.
    noisy = jnp.where(mask == 1, ids, jax.random.randint(jax.random.key(1), ids.shape, 4, CONFIG.vocab_size))
    # Positions are derived from the ids; pass the true ones so only the token identity changes.
    positions = position_ids_from_input_ids(ids, CONFIG.pad_token_id)
    changed = model.apply({"params": params}, noisy, mask, position_ids=positions)
    assert not np.allclose(base[~real], changed[~real], atol=1e-3)  # the padded outputs did change
    np.testing.assert_allclose(base[real], changed[real], atol=1e-6, rtol=0)


def test_rows_are_independent_of_their_batch_neighbours(mlm):
    model, params = mlm
    ids, mask = padded_batch()
    together = model.apply({"params": params}, ids, mask)
    alone = model.apply({"params": params}, ids[2:, :5], mask[2:, :5])
    np.testing.assert_allclose(together[2, :5], alone[0], atol=1e-5, rtol=0)


def test_masked_positions_project_only_those(mlm):
    model, params = mlm
    ids, mask = padded_batch()
    positions = jnp.array([[0, 5, 31], [1, 2, 19], [4, 0, 0]])
    full = model.apply({"params": params}, ids, mask)
    some = model.apply({"params": params}, ids, mask, masked_positions=positions)
    assert some.shape == (3, 3, CONFIG.vocab_size)
    np.testing.assert_allclose(some, jnp.take_along_axis(full, positions[..., None], axis=1), atol=1e-5)


def test_bfloat16_forward_stays_close_to_float32(mlm):
    model, params = mlm
    ids, mask = padded_batch()
    real = np.asarray(mask, bool)
    f32 = np.asarray(model.apply({"params": params}, ids, mask))[real]
    bf16 = np.asarray(RobertaForMaskedLM(CONFIG, dtype=jnp.bfloat16).apply({"params": params}, ids, mask))[real]
    assert bf16.dtype == np.float32  # logits leave the model in float32
    # bfloat16 keeps 8 mantissa bits: stated tolerance 5e-2 absolute on logits of scale ~1.
    assert np.abs(f32).max() > 0.5
    np.testing.assert_allclose(bf16, f32, atol=5e-2, rtol=0)
    assert np.mean(bf16.argmax(-1) == f32.argmax(-1)) > 0.95


def test_written_out_softmax_matches_dot_product_attention_and_records_weights(mlm):
    model, params = mlm
    ids, mask = padded_batch()
    fused = model.apply({"params": params}, ids, mask)
    explicit, state = model.apply({"params": params}, ids, mask, mutable=["intermediates"])
    np.testing.assert_allclose(explicit, fused, atol=1e-5, rtol=0)
    (weights,) = state["intermediates"]["roberta"]["encoder"]["layer_0"]["attention"]["self"]["attention_weights"]
    assert weights.shape == (3, CONFIG.num_attention_heads, 32, 32)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(weights[2, :, :, 5:], 0.0)  # nobody attends to padding


def test_dropout_is_active_only_when_not_deterministic(mlm):
    model, params = mlm
    ids, mask = padded_batch()
    eval_out = model.apply({"params": params}, ids, mask)
    train = [
        model.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(s)})
        for s in (1, 2)
    ]
    assert not np.allclose(train[0], eval_out, atol=1e-3)
    assert not np.allclose(train[0], train[1], atol=1e-3)
    no_dropout = RobertaForMaskedLM(CONFIG.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    np.testing.assert_allclose(
        no_dropout.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(1)}),
        eval_out, atol=1e-6,
    )


@pytest.mark.parametrize("policy", [True, "full", "dots"])
def test_remat_gives_the_same_loss_and_gradients(policy):
    ids, mask = padded_batch()
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 2, 3))

    def loss(model, params):
        logits = model.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(7)})
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])

    plain, remat = RobertaForSequenceClassification(CONFIG), RobertaForSequenceClassification(CONFIG, remat=policy)
    params = init_params(plain, jax.random.key(0))
    (l1, g1), (l2, g2) = (jax.value_and_grad(lambda p, m=m: loss(m, p))(params) for m in (plain, remat))
    np.testing.assert_allclose(l1, l2, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


def test_gelu_keeps_its_input_and_dropout_its_key_for_the_backward_pass(capsys):
    """Autodiff alone keeps GELU's erfc and exp terms, [B, L, ffn] each, and every dropout mask; an encoder
    layer keeps the FFN's pre-activation alone of its [B, L, ffn] arrays, and no mask."""
    from jax.ad_checkpoint import print_saved_residuals

    from roberta_jax.model.attention import AttentionMask
    from roberta_jax.model.layers import RobertaLayer

    config = preset("micro", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)
    layer = RobertaLayer(config, dtype=jnp.bfloat16, implementation="xla")
    x = jax.random.normal(jax.random.key(0), (2, 16, config.hidden_size), jnp.bfloat16)
    params = layer.init(jax.random.key(1), x, AttentionMask(None, None))

    def loss(x):
        out = layer.apply(params, x, AttentionMask(None, None), deterministic=False,
                          rngs={"dropout": jax.random.key(2)})
        return jnp.sum(out.astype(jnp.float32))

    print_saved_residuals(loss, x)
    saved = [line for line in capsys.readouterr().out.splitlines() if "[2,16," in line]
    made_by = {line.split(" output of ")[1].split()[0] for line in saved if " output of " in line}
    assert not made_by & {"erfc", "exp", "ge", "lt"}, saved
    assert not any(line.startswith(("bool[", "pred[", "u32[", "u16[")) for line in saved), saved
    ffn = [line for line in saved if f"[2,16,{config.intermediate_size}]" in line]
    assert len(ffn) == 1 and ffn[0].startswith("bf16["), ffn


def test_unknown_remat_policy_names_the_policies():
    ids, mask = padded_batch()
    message = r"remat='some' is not a policy; choose from \['dots', 'full', 'none', 'offload'\]"
    with pytest.raises(ValueError, match=message):
        RobertaForSequenceClassification(CONFIG, remat="some").init(jax.random.key(0), ids, mask)


def test_params_carry_logical_axis_names():
    boxed = RobertaForMaskedLM(CONFIG).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    layer = boxed["roberta"]["encoder"]["layer_0"]
    assert boxed["roberta"]["embeddings"]["word_embeddings"]["embedding"].names == ("vocab", "embed")
    assert layer["attention"]["self"]["query"]["kernel"].names == ("embed", "heads")
    assert layer["intermediate"]["dense"]["kernel"].names == ("embed", "mlp")
    assert layer["output"]["dense"]["kernel"].names == ("mlp", "embed")
    unnamed = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: hasattr(x, "names"))[0]
        if not hasattr(leaf, "names")
    ]
    assert unnamed == []


@pytest.mark.parametrize("is_decoder", [False, True])
def test_no_attention_mask_means_attend_to_everything(is_decoder):
    model = RobertaForMaskedLM(CONFIG) if not is_decoder else RobertaForCausalLM(CONFIG.replace(is_decoder=True))
    params = init_params(model, jax.random.key(0))
    ids, _ = padded_batch()
    ones = jnp.ones_like(ids)
    np.testing.assert_allclose(model.apply({"params": params}, ids), model.apply({"params": params}, ids, ones),
                               atol=1e-6)
    explicit, _ = model.apply({"params": params}, ids, mutable=["intermediates"])
    np.testing.assert_allclose(explicit, model.apply({"params": params}, ids), atol=1e-5)


def test_attention_implementation_picks_cudnn_only_where_it_applies():
    bf16 = jnp.bfloat16
    assert attention_implementation(None, bf16, 64, masked=False, backend="gpu") == "cudnn"
    assert attention_implementation("", jnp.float16, 128, masked=False, backend="gpu") == "cudnn"
    for dtype, head_dim, masked, backend in [(jnp.float32, 64, False, "gpu"), (bf16, 64, True, "gpu"),
                                             (bf16, 160, False, "gpu"), (bf16, 36, False, "gpu"),
                                             (bf16, 64, False, "cpu"), (bf16, 64, False, "tpu")]:
        assert attention_implementation(None, dtype, head_dim, masked, backend) == "xla", (dtype, head_dim, masked)
    assert attention_implementation("cudnn", jnp.float32, 64, masked=True, backend="cpu") == "cudnn"
    assert attention_implementation(None, bf16, 64, masked=False) == ("cudnn" if jax.default_backend() == "gpu"
                                                                       else "xla")
