"""The dropout mask: its rate (overall and per 16-bit lane), independence, scaling, keys, meshes."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.model.dropout import Dropout, keep_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def within(observed: float, p: float, n: int, sigmas: float = 6.0) -> bool:
    """`observed` is a binomial fraction of n draws with probability p, to `sigmas` standard errors."""
    return abs(observed - p) <= sigmas * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_drop_rate_overall_and_in_every_lane(rate):
    mask, keep_prob = keep_mask(jax.random.key(0), (32, 256, 512), rate)
    dropped = ~np.asarray(mask)
    assert keep_prob == (65536 - round(rate * 65536)) / 65536
    assert within(dropped.mean(), 1 - keep_prob, dropped.size)
    for lane in range(4):  # the four 16-bit pieces of each hash, and the rows and columns
        part = dropped[..., lane::4]
        assert within(part.mean(), 1 - keep_prob, part.size), lane
    assert within(dropped[:, :128].mean(), 1 - keep_prob, dropped[:, :128].size)
    assert within(dropped[..., 256:].mean(), 1 - keep_prob, dropped[..., 256:].size)


def test_neighbouring_elements_are_uncorrelated():
    mask = np.asarray(keep_mask(jax.random.key(1), (16, 256, 768), 0.1)[0]).astype(np.float64)
    limit = 6 / np.sqrt(mask[..., :-1].size)
    pairs = {
        "same hash word": (mask[..., 0::4], mask[..., 1::4]),
        "other word of the hash": (mask[..., 0::4], mask[..., 2::4]),
        "next hash": (mask[..., 3:-1:4], mask[..., 4::4]),
        "next row": (mask[:, :-1], mask[:, 1:]),
        "next sequence": (mask[:-1], mask[1:]),
    }
    for name, (a, b) in pairs.items():
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < limit, name


def test_kept_values_are_scaled_by_the_keep_probability():
    x = jax.random.normal(jax.random.key(2), (8, 128, 64))
    out = np.asarray(Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    keep_prob = keep_mask(jax.random.key(0), (4,), 0.1)[1]
    kept = out != 0
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / keep_prob, rtol=1e-6)
    assert within(1 - kept.mean(), 1 - keep_prob, kept.size)
    ones = Dropout(0.1).apply({}, jnp.ones((64, 512, 64)), deterministic=False, rngs={"dropout": jax.random.key(4)})
    assert abs(float(ones.mean()) - 1.0) < 6 * np.sqrt(0.1 / 0.9 / ones.size)


def test_module_uses_its_dropout_rng_and_switches_off():
    x = jnp.ones((4, 8, 16))
    deterministic = Dropout(0.5).apply({}, x, deterministic=True)
    assert deterministic is x
    assert (Dropout(0.0).apply({}, x, deterministic=False) == x).all()
    assert (Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}) == 0).all()
    a, b, c = (
        Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(k)}) for k in (5, 5, 6)
    )
    assert (a == b).all() and not (a == c).all()


def test_other_keys_give_independent_masks():
    shape = (16, 128, 256)
    m1, m2 = (np.asarray(keep_mask(jax.random.key(k), shape, 0.1)[0]) for k in (7, 8))
    keep = float(keep_mask(jax.random.key(7), shape, 0.1)[1])
    # Independent masks agree where both keep or both drop.
    assert within((m1 == m2).mean(), keep**2 + (1 - keep) ** 2, m1.size)


@pytest.mark.parametrize("impl,shape", [("threefry2x32", (64, 256, 30)), ("philox4x32", (64, 256, 32)),
                                        ("threefry2x32", (100_000,))])
def test_shapes_and_generators_off_the_fast_path(impl, shape):
    mask, keep_prob = keep_mask(jax.random.key(9, impl=impl), shape, 0.1)
    assert mask.shape == shape
    assert within(1 - np.asarray(mask).mean(), 1 - keep_prob, mask.size)


def test_mask_is_the_same_on_any_mesh():
    """Eight CPU devices: the mask sharded three ways equals the mask made on one device."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from roberta_jax.model.dropout import keep_mask
        key, shape = jax.random.key(11), (16, 64, 96)
        one = np.asarray(jax.jit(lambda k: keep_mask(k, shape, 0.1)[0])(key))
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("a", "b", "c"))
        for spec in (P(("a", "b", "c")), P("a", "b", "c"), P(None, ("a", "b"), "c")):
            f = jax.jit(lambda k: keep_mask(k, shape, 0.1)[0], out_shardings=NamedSharding(mesh, spec))
            out = f(key)
            assert len(out.sharding.device_set) == 8
            assert (np.asarray(out) == one).all(), spec
        print("same on every mesh")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "same on every mesh" in out.stdout


def test_the_backward_pass_redraws_the_mask_from_the_key(capsys):
    """The gradient is the mask's (what autodiff of the masked select gives), and the only residual the
    backward pass keeps is the key: no mask or random words of the input's shape."""
    from jax.ad_checkpoint import print_saved_residuals

    from roberta_jax.model.dropout import dropout

    x, key = jax.random.normal(jax.random.key(5), (4, 64, 96), jnp.bfloat16), jax.random.key(6)
    weights = jnp.linspace(-1, 1, 96, dtype=jnp.bfloat16)
    mask, keep_prob = keep_mask(key, x.shape, 0.1)
    grad = jax.grad(lambda x: jnp.sum(dropout(x * 3, key, 0.1) * weights).astype(jnp.float32))(x)
    expected = jax.grad(lambda x: jnp.sum(jnp.where(mask, x * 3 / keep_prob, 0) * weights).astype(jnp.float32))(x)
    np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(expected, np.float32))
    print_saved_residuals(lambda x: jnp.sum(dropout(x * 3, key, 0.1)), x)
    saved = capsys.readouterr().out
    assert "key<fry>[]" in saved and "[4,64,96]" not in saved, saved
