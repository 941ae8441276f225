"""The Pallas TPU splash-attention path: its outputs and gradients against XLA's attention (the kernel run in
the Pallas interpreter on the CPU), its choice by platform and shape, its segment ids, and the compiled TPU
program of a small model (for a v5e and a v5p slice, from this CPU host through libtpu's compiler)."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.model import tpu_attention
from roberta_jax.model.attention import attention_implementation, attention_mask_4d
from roberta_jax.model.config import preset
from roberta_jax.model.heads import init_params
from roberta_jax.model.layers import RobertaModel
from roberta_jax.tools.aot import format_report
from roberta_jax.train import aot, sharding
from roberta_jax.train.config import default_config, with_preset

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
B, L, N, D = 2, 256, 2, 64
# Forward and gradient tolerances: float32 to the kernel's reassociated sums; bfloat16 to its rounding
# (q scaled before the product, probabilities cast to bfloat16 for the value product in both).
TOLERANCES = {jnp.float32: (1e-5, 1e-4), jnp.bfloat16: (2e-2, 2e-2)}


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """The kernel in the Pallas interpreter, with blocks of 128 so that rows of 256 take two blocks of keys
    (the online softmax across blocks, and the causal mask's skipped block)."""
    monkeypatch.setattr(tpu_attention, "INTERPRET", True)
    monkeypatch.setattr(tpu_attention, "BLOCK_SIZES", (128,))


def masks(case: str):
    """(padding [B, L] or None, segment ids [B, L] or None, causal) of a case. Row 1 ends in 30 padding
    tokens; with segments, those form their own segment (as packed rows have them) and see no key at all."""
    padding = np.ones((B, L), np.int32)
    padding[1, -30:] = 0
    segments = np.zeros((B, L), np.int32)
    segments[0, 100:200], segments[0, 200:] = 1, 2
    segments[1, 150:], segments[1, -30:] = 1, 2
    return {
        "none": (None, None, False),
        "padding": (padding, None, False),
        "segments": (padding, segments, False),
        "causal": (None, None, True),
        "causal_padding": (padding, None, True),
        "causal_segments": (padding, segments, True),
    }[case]


def seen(padding, segments, causal) -> np.ndarray:
    """bool [B, L]: the queries that may see at least one key (the rest are read by nothing)."""
    mask = attention_mask_4d(padding, segments)
    allowed = np.ones((B, 1, L, L), bool) if mask is None else np.broadcast_to(np.asarray(mask), (B, 1, L, L))
    if causal:
        allowed = allowed & np.tril(np.ones((L, L), bool))
    return allowed[:, 0].any(-1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["none", "padding", "segments", "causal", "causal_padding", "causal_segments"])
def test_outputs_and_gradients_match_xla(case, dtype):
    padding, segments, causal = masks(case)
    q, k, v = (jax.random.normal(key, (B, L, N, D), jnp.float32).astype(dtype)
               for key in jax.random.split(jax.random.key(0), 3))
    weights = jax.random.normal(jax.random.key(1), (B, L, N, D)) * seen(padding, segments, causal)[:, :, None, None]

    def splash(q, k, v):
        return tpu_attention.splash_attention(q, k, v, padding, segments, causal)

    def xla(q, k, v):
        mask = attention_mask_4d(padding, segments)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")

    def loss(attend):  # the rows that see no key are left out: their outputs differ and matter to nothing
        return jax.jit(jax.value_and_grad(lambda q, k, v: (attend(q, k, v) * weights).sum(), argnums=(0, 1, 2)))

    out, expected = jax.jit(splash)(q, k, v), jax.jit(xla)(q, k, v)
    assert out.dtype == dtype and np.isfinite(np.asarray(out, np.float32)).all()
    forward_tol, grad_tol = TOLERANCES[dtype]
    live = seen(padding, segments, causal)
    np.testing.assert_allclose(np.asarray(out, np.float32)[live], np.asarray(expected, np.float32)[live],
                               atol=forward_tol, rtol=forward_tol)
    (_, grads), (_, expected_grads) = loss(splash)(q, k, v), loss(xla)(q, k, v)
    for name, g, e in zip("qkv", grads, expected_grads):
        g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
        assert np.isfinite(g).all(), name
        # relative to the largest gradient entry: bfloat16 gradients are rounded at that scale
        assert np.abs(g - e).max() <= grad_tol * np.abs(e).max(), (name, np.abs(g - e).max(), np.abs(e).max())


def test_padding_and_segments_as_kernel_segment_ids():
    padding = np.array([[1, 1, 1, 0]])
    segments = np.array([[0, 0, 1, 1]])
    q, kv = tpu_attention.kernel_segment_ids(padding, segments)
    np.testing.assert_array_equal(q, [[0, 0, 1, 1]])
    np.testing.assert_array_equal(kv, [[0, 0, 1, tpu_attention.PAD_SEGMENT]])
    # the kernel's rule (equal ids) allows exactly the keys of the dense mask
    np.testing.assert_array_equal(np.asarray(q)[:, :, None] == np.asarray(kv)[:, None, :],
                                  np.asarray(attention_mask_4d(padding, segments))[:, 0])
    q, kv = tpu_attention.kernel_segment_ids(padding, None)
    np.testing.assert_array_equal(q, [[0, 0, 0, 0]])
    np.testing.assert_array_equal(kv, [[0, 0, 0, tpu_attention.PAD_SEGMENT]])
    assert tpu_attention.kernel_segment_ids(None, None) is None


def test_splash_is_chosen_on_tpu_where_it_applies():
    bf16 = jnp.bfloat16
    for dtype in (bf16, jnp.float32):
        for masked in (False, True):
            assert attention_implementation(None, dtype, 64, masked, "tpu", 512) == "splash"
    assert attention_implementation("", bf16, 128, True, "tpu", 128) == "splash"
    for head_dim, length in [(64, 500), (64, 64), (32, 512), (96, 512), (64, None)]:
        assert attention_implementation(None, bf16, head_dim, False, "tpu", length) == "xla", (head_dim, length)
    assert attention_implementation(None, bf16, 64, False, "cpu", 512) == "xla"
    assert attention_implementation(None, bf16, 64, False, "gpu", 512) == "cudnn"
    assert attention_implementation("xla", bf16, 64, False, "tpu", 512) == "xla"
    assert attention_implementation("splash", jnp.float32, 64, True, "cpu", 512) == "splash"
    assert attention_implementation("splash", bf16, 64, False, "tpu", 8) == "xla"  # e.g. `init`'s short rows
    with pytest.raises(ValueError, match="multiple of 128 tokens.*got length 64"):
        tpu_attention.splash_attention(*(jnp.zeros((1, 64, 1, 64)),) * 3)


def test_placement_splits_the_batch_and_the_heads_the_rules_name():
    mesh = sharding.make_mesh({"data": -1})
    rules = sharding.axis_rules([("batch", ("data", "fsdp")), ("heads", "tensor"), ("embed", "fsdp")])
    placement = sharding.attention_placement(mesh, rules)
    assert placement == tpu_attention.Placement(mesh, ("data", "fsdp"), ("tensor",))
    assert placement.platform == jax.default_backend()
    assert placement.spec(12) == (jax.P(("data", "fsdp"), None, ("tensor",), None), jax.P(("data", "fsdp"), None))
    # heads shared by batch axes stay whole
    rules = sharding.axis_rules([("batch", "data"), ("heads", ("data", "tensor"))])
    assert sharding.attention_placement(mesh, rules).head_axes == ("tensor",)


@pytest.mark.parametrize("is_decoder", [False, True])
def test_model_through_splash_matches_xla(is_decoder):
    """The encoder's hidden states and parameter gradients with splash (interpreted) equal XLA's, on packed
    rows with padding and segment ids."""
    config = preset("micro", hidden_size=128, num_attention_heads=2, num_hidden_layers=1, intermediate_size=128,
                    max_position_embeddings=L + 2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    is_decoder=is_decoder)
    padding, segments, _ = masks("segments")
    ids = np.asarray(jax.random.randint(jax.random.key(2), (B, L), 3, config.vocab_size)) * padding + (1 - padding)
    live = seen(padding, segments, is_decoder)
    params = init_params(RobertaModel(config, add_pooling_layer=False), jax.random.key(0))

    def run(implementation):
        model = RobertaModel(config, add_pooling_layer=False, implementation=implementation)

        def loss(params):
            hidden = model.apply({"params": params}, ids, padding, segment_ids=segments)[0]
            return (hidden * live[:, :, None]).sum(), hidden

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, hidden), grads = run("splash")
    (_, expected), expected_grads = run("xla")
    np.testing.assert_allclose(hidden[live], expected[live], atol=1e-4, rtol=1e-4)
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(g, e, atol=1e-4 * max(1.0, float(np.abs(e).max())), rtol=1e-4)


def test_per_shard_kernel_on_a_two_device_mesh_matches_xla():
    """Under a (data=2) mesh the kernel runs per shard (`jax.shard_map`) and gives XLA's outputs."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from roberta_jax.model import tpu_attention
        from roberta_jax.train import sharding
        tpu_attention.INTERPRET = True
        mesh = sharding.make_mesh({"data": 2})
        placement = sharding.attention_placement(mesh, sharding.axis_rules([("batch", "data")]))
        q, k, v = (jax.random.normal(key, (4, 128, 2, 64)) for key in jax.random.split(jax.random.key(0), 3))
        padding = np.ones((4, 128), np.int32)
        padding[1, 100:] = 0
        batch = jax.sharding.NamedSharding(mesh, jax.P("data"))
        q, k, v, padding = (jax.device_put(x, batch) for x in (q, k, v, padding))
        attend = jax.jit(lambda q, k, v, m: tpu_attention.splash_attention(q, k, v, m, placement=placement))
        out = attend(q, k, v, padding)
        mask = padding.astype(bool)[:, None, None, :]
        expected = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
        assert out.sharding.spec[0] == "data", out.sharding
        np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
        print("ok")
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def small_config(attention_dropout: float):
    """A model whose heads (64) and rows (128) the kernel takes, 8 rows per step, in bfloat16, FSDP."""
    c = with_preset(default_config(), "micro")
    c.model.update(vocab_size=1024, hidden_size=128, num_attention_heads=2, max_position_embeddings=130,
                   attention_probs_dropout_prob=attention_dropout)
    c.update(batch_size=8, dtype="bfloat16")
    c.data.max_seq_length = 128
    c.mesh.update(data=1, fsdp=-1)
    return c


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler")
@pytest.mark.parametrize("target", ["v5e-4", "v5p-8"])
def test_compiled_tpu_steps_run_the_kernel_and_the_report_says_so(target, monkeypatch):
    """Compiled for a TPU slice from this CPU host (where `jax.default_backend()` is "cpu"), the steps choose
    splash from the mesh's platform: the program holds its Mosaic custom calls, per shard of the batch. With
    the paper's attention dropout the train step writes the probabilities out (XLA); eval still runs splash."""
    monkeypatch.setattr(tpu_attention, "INTERPRET", False)
    monkeypatch.setattr(tpu_attention, "BLOCK_SIZES", (512, 256, 128))
    devices = aot.target_devices(target)
    c = small_config(attention_dropout=0.0)
    compiled = aot.compile_steps(c, devices)
    text = compiled.train.as_text()
    assert 'custom_call_target="tpu_custom_call"' in text and "splash_mha_fwd" in text and "splash_mha_dkv" in text
    assert "bf16[2,2,128,64]" in text  # the kernel sees one chip's 2 rows of the 8 (FSDP over 4 chips)
    reports = [aot.step_report(name, step) for name, step in (("train_step", compiled.train),
                                                              ("eval_step", compiled.eval))]
    assert [r.attention for r in reports] == ["splash", "splash"]
    report = format_report(target, c, compiled, reports)
    assert report.count("attention: splash (Pallas TPU flash-attention kernel)") == 2, report
    dropout = aot.compile_steps(small_config(attention_dropout=0.1), devices)
    assert aot.step_report("train_step", dropout.train).attention == "xla"
    assert aot.step_report("eval_step", dropout.eval).attention == "splash"


def lse_lifetimes(hlo: str) -> list[tuple[int, int, int]]:
    """(line of a forward kernel, line where its 128-lane log-sum-exp output is cut down, line of the next
    forward kernel) in a scheduled HLO text, following the output through copies, bitcasts and
    asynchronous copies of its size."""
    lines = hlo.splitlines()
    defined = {}  # name -> (line, elements; None for a tuple, as copy-start's)
    for i, line in enumerate(lines):
        found = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (?:\w+\[([\d,]*)\]|\()", line)
        if found:
            dims = None if found.group(2) is None else [int(n) for n in found.group(2).split(",") if n]
            defined[found.group(1)] = (i, None if dims is None else int(np.prod(dims)))
    kernels = [i for i, line in enumerate(lines) if re.match(r"\s*%splash_mha_fwd_residuals[.\d]* = \(", line)]
    lifetimes = []
    for k, nxt in zip(kernels, kernels[1:] + [len(lines)]):
        kernel = re.match(r"\s*%([\w.\-]+) = ", lines[k]).group(1)
        lse = next(n for n, (i, _) in defined.items()
                   if re.search(rf"get-tuple-element\(%{re.escape(kernel)}\), index=4", lines[i]))
        size, cut = defined[lse][1], None
        while cut is None:
            user = min((n for n, (i, _) in defined.items() if re.search(rf"[(, ]%{re.escape(lse)}[,)]", lines[i])),
                       key=lambda n: defined[n][0])
            lse, cut = (user, None) if defined[user][1] in (None, size) else (lse, defined[user][0])
        lifetimes.append((k, cut, nxt))
    return lifetimes


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler")
def test_each_layers_log_sum_exp_is_cut_down_before_the_next_layer_runs(monkeypatch):
    """The kernel writes its log-sum-exp 128 lanes wide (f32 [b, n, L, 128]) and the backward pass keeps lane
    0. Compiled for a v5p slice, every layer's wide buffer must be cut down before the next layer's kernel
    runs; left to XLA's scheduler, all of them lived until the end of the forward pass (0.75 GiB in
    roberta-large at 8 rows of 512)."""
    monkeypatch.setattr(tpu_attention, "INTERPRET", False)
    monkeypatch.setattr(tpu_attention, "BLOCK_SIZES", (512, 256, 128))
    c = small_config(attention_dropout=0.0)
    c.model.num_hidden_layers = 4
    text = aot.compile_steps(c, aot.target_devices("v5p-8"), eval_step=False).train.as_text()
    lifetimes = lse_lifetimes(text)
    assert len(lifetimes) == 4, lifetimes
    assert all(kernel < cut < next_kernel for kernel, cut, next_kernel in lifetimes[:-1]), lifetimes
