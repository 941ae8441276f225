"""Ahead-of-time compilation of the real steps: slice names, the chip table, per-chip bytes, FLOPs and the
roofline, on the host's CPU and, where libtpu is installed, for a TPU slice described by libtpu."""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.model.config import preset
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.train import aot, chips, cli, optimizer, sharding, steps
from roberta_jax.train.config import default_config, with_preset

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None and not os.environ.get("NO_LIBTPU_TEST")


def micro_config(**mesh):
    """The unit tests' model on rows of 64, 8 per step, in bfloat16 as on an accelerator."""
    c = with_preset(default_config(), "micro")
    c.model.update(vocab_size=1024, max_position_embeddings=66)
    c.update(batch_size=8, dtype="bfloat16")
    c.data.max_seq_length = 64
    c.mesh.update(mesh or dict(data=-1))
    return c


@pytest.mark.parametrize("target, name", [
    ("v5p-8", "v5p:2x2x1"), ("v5p-128", "v5p:4x4x4"), ("v4-64", "v4:2x4x4"), ("v5e-16", "v5e:4x4"),
    ("v6e-256", "v6e:16x16"), ("v5e:2x4", "v5e:2x4"),
])
def test_accelerator_types_name_their_topology(target, name):
    assert aot.topology_name(target) == name


def test_unknown_slices_are_errors_that_list_the_sizes():
    with pytest.raises(ValueError, match=r"no standard v5p slice of 3 chips; sizes: v5p-8, v5p-16"):
        aot.topology_name("v5p-6")
    with pytest.raises(ValueError, match="unknown TPU target 'v7x-8'"):
        aot.topology_name("v7x-8")


def test_the_command_line_names_a_bad_target_in_one_line():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "roberta_jax.tools.aot", f"--config={repo}/configs/tiny.py",
                          "--target=v5p-6"], cwd=repo, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "python -m roberta_jax.tools.aot: error: v5p-6: no standard v5p slice of 3 chips")
    assert "Traceback" not in out.stderr


def test_chips_by_device_kind():
    assert chips.chip_for("TPU v5 lite").name == "TPU v5e"  # the longer prefix wins over "TPU v5"
    assert chips.chip_for("TPU v5").name == "TPU v5p"
    assert chips.chip_for("TPU v6 lite").peak_flops == 918e12
    assert chips.chip_for("NVIDIA H100 80GB HBM3").hbm_bandwidth == 3350e9
    assert chips.chip_for("cpu") is None


def test_abstract_state_is_the_state_that_would_be_made():
    c = micro_config()
    model = RobertaForMaskedLM(preset("micro"))
    tx, _ = optimizer.make_optimizer(c.optimizer)
    mesh = sharding.make_mesh({"data": -1})
    rules = sharding.axis_rules(c.logical_axis_rules)
    abstract, shardings = steps.abstract_train_state(model, tx, mesh, rules)
    state, real_shardings = steps.create_train_state(model, tx, mesh, 0, rules)
    same = jax.tree.map(lambda a, x: (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding), abstract, state)
    assert all(jax.tree.leaves(same)) and shardings == real_shardings


@pytest.fixture(scope="module")
def host_compiled():
    c = micro_config()
    return c, aot.compile_steps(c, jax.devices())


def test_host_report_counts_the_state_and_the_model_flops(host_compiled):
    c, compiled = host_compiled
    report = aot.step_report("train_step", compiled.train)
    # float32 params and Adam's two moments, and five int32 counters (the step, the two non-finite counts,
    # Adam's and the schedule's step counts), all on the one device.
    num_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
        lambda: compiled.model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))))
    assert compiled.state_bytes == 3 * 4 * num_params + 5 * 4
    assert report.argument_bytes >= compiled.state_bytes
    # XLA's count against the model's 6N + attention formula: the LM head runs on the masked slots only
    # and XLA adds the elementwise work, so they agree within a factor, not exactly.
    model_flops = aot.model_flops_per_step(compiled, c.data.max_seq_length)
    assert 0.3 < report.flops / model_flops < 3.0
    assert report.temp_bytes > 0 and report.bytes_accessed > 0


def test_roofline_is_the_slower_of_compute_and_memory():
    report = aot.StepReport("train_step", 0, 0, 0, 0, flops=459e12, bytes_accessed=2765e9 / 2, peak_buffers=[])
    bound = aot.roofline(report, chips.chip_for("TPU v5"), tokens_per_step=4096, num_devices=4,
                         model_flops_per_step=4 * 459e12 / 2)
    assert bound.bound == "compute" and bound.step_seconds == pytest.approx(1.0)
    assert bound.tokens_per_second_per_chip == pytest.approx(1024) and bound.mfu == pytest.approx(0.5)


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler")
def test_compiles_for_a_tpu_slice_and_names_the_peak_buffers(tmp_path):
    from roberta_jax.tools.aot import _gib, format_report

    c = micro_config(data=1, fsdp=-1)
    devices = aot.target_devices("v5p-8")
    assert len(devices) == 4 and devices[0].device_kind == "TPU v5"
    compiled = aot.compile_steps(c, devices, dump_dir=str(tmp_path))
    report = aot.step_report("train_step", compiled.train, str(tmp_path), num_buffers=4)
    # FSDP over 4 chips: each holds a quarter of every divisible parameter and its moments.
    single = aot.compile_steps(micro_config(), jax.devices())
    assert compiled.state_bytes < 0.5 * single.state_bytes
    assert len(report.peak_buffers) == 4
    assert all(b.bytes > 0 and b.shapes for b in report.peak_buffers)
    assert any("jit(train_step)" in op for b in report.peak_buffers for op in b.ops)
    assert np.all(np.diff([b.bytes for b in report.peak_buffers]) <= 0)  # largest first
    # What is live at the schedule's peak, parameters aside, fits in the temporaries' allocation.
    assert 0 < report.peak_live_bytes <= report.temp_bytes
    text = format_report("v5p-8", c, compiled, [report])
    assert f"({_gib(report.peak_live_bytes)} live at the schedule's peak" in text
    # XLA's bytes accessed count what the TPU keeps in VMEM too; the HBM traffic is read from the HLO.
    assert 0 < report.hbm_bytes < report.bytes_accessed
    assert report.traffic.on_chip_bytes > 0
    account = compiled.traffic()
    assert f"compiled: {report.hbm_bytes / account.total:.2f}x that" in text
    assert "operations moving the most HBM bytes" in text and "layer_*" in text


def activation_config(attention_dropout: float, heads: int, batch_size: int, mesh: dict, dtype: str):
    """A model whose layers hold most of its memory, as roberta-base's do at 512: 4 layers of 128 on
    rows of 256, a 512-token vocabulary; 4 heads of 32 run XLA's attention, 2 of 64 the splash kernel."""
    c = with_preset(default_config(), "micro")
    c.model.update(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=heads,
                   intermediate_size=512, max_position_embeddings=258,
                   attention_probs_dropout_prob=attention_dropout)
    c.update(batch_size=batch_size, dtype=dtype)
    c.data.max_seq_length = 256
    c.mesh.update(mesh)
    return c


@pytest.mark.parametrize("attention_dropout, heads, attention", [(0.0, 4, "xla"), (0.1, 4, "xla"),
                                                                  (0.0, 2, "splash"), (0.1, 2, "xla")])
def test_temporaries_stay_near_what_the_backward_pass_needs(attention_dropout, heads, attention):
    """The train step's temporaries against `aot.activation_bytes` (Korthikanti et al.'s accounting).
    For a TPU slice (FSDP over 4 chips, 8 rows each): at most 1.5x; the step whose activation
    constraints did not bind held 5x. Without libtpu, on this host's one CPU device, in float32 (the
    CPU computes bfloat16 in float32) against twice the 16-bit accounting: XLA's CPU scheduler does not
    minimise memory as the TPU's does, so the bound there is 2.5x (and no splash kernel to compile)."""
    if HAS_LIBTPU:
        c = activation_config(attention_dropout, heads, 32, dict(data=1, fsdp=-1), "bfloat16")
        compiled, bound, scale = aot.compile_steps(c, aot.target_devices("v5p-8")), 1.5, 1
    elif attention == "splash":
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler for the splash kernel")
    else:
        c = activation_config(attention_dropout, heads, 8, dict(data=-1), "float32")
        compiled, bound, scale = aot.compile_steps(c, jax.devices()[:1]), 2.5, 2
    report = aot.step_report("train_step", compiled.train)
    assert compiled.rows_per_device == 8 and report.attention == attention  # dropout needs the probabilities
    needed = scale * compiled.activation_bytes(report)
    assert needed < report.temp_bytes < bound * needed, (report.temp_bytes / needed, bound)


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler")
def test_an_hbm_limit_packs_the_step_and_a_step_over_it_is_named():
    """XLA's TPU compiler spends the HBM a chip has. Compiled as if each chip had 256 MiB, the small model's
    step holds fewer temporaries for the same FLOPs, and the report says which HBM it was compiled for;
    below what the step needs, XLA's refusal names the step, the chip and the limit."""
    from roberta_jax.tools.aot import format_report

    c = activation_config(0.0, 4, 32, dict(data=1, fsdp=-1), "bfloat16")
    devices = aot.target_devices("v5p-8")
    free, limited = (aot.compile_steps(c, devices, eval_step=False, hbm_bytes=hbm) for hbm in (None, 256 * 2**20))
    free_report, limited_report = (aot.step_report("train_step", s.train) for s in (free, limited))
    assert limited_report.temp_bytes < free_report.temp_bytes and limited_report.flops == free_report.flops
    report = format_report("v5p-8", c, limited, [limited_report])
    assert "compiled for 0.25 GiB of HBM (--hbm_gib; the chip has 95.00 GiB): fits" in report, report
    with pytest.raises(aot.DoesNotFit, match=r"^the train step does not fit in the HBM of a TPU v5 chip as limited "
                                             r"to 64 MiB: RESOURCE_EXHAUSTED: .*HBM"):
        aot.compile_steps(c, devices, eval_step=False, hbm_bytes=64 * 2**20)


def test_an_hbm_limit_is_for_tpu_targets():
    assert aot.hbm_options(jax.devices(), None) == {}
    with pytest.raises(ValueError, match="applies to TPU targets .* not to cpu devices"):
        aot.hbm_options(jax.devices(), 2**30)


def test_activation_accounting_is_korthikantis_formula():
    config = preset("base")  # roberta-base, 8 rows of 512: 2.8 GB with the scores, 1.3 GB fused
    assert aot.activation_bytes(config, 8, 512, scores_written=True) == 12 * 512 * 8 * 768 * (34 + 5 * 12 * 512 / 768)
    assert aot.activation_bytes(config, 8, 512, scores_written=False) == 12 * 512 * 8 * 768 * 34
    # heads of 64 read by the TPU kernel heads-first fill half of its 128 lanes: q, k, v kept take twice 6sbh
    assert aot.activation_bytes(config, 8, 512, scores_written=False, lane_padded=True) == 12 * 512 * 8 * 768 * 40
    no_dropout = preset("base", attention_probs_dropout_prob=0.0)
    assert aot.activation_bytes(no_dropout, 8, 512, scores_written=True) == 12 * 512 * 8 * (34 * 768 + 4 * 12 * 512)


def test_traffic_accounting_counts_each_part():
    config = preset("base")  # roberta-base, 8 rows of 512, 80 predictions a row, on 4 chips of FSDP
    h, f, v, p = 768, 3072, 50265, 124_697_433
    account = aot.traffic_bytes(config, 8, 512, 80, p, param_shards=4, state_shards=4)
    # per token and layer: forward 10h + 8h + 2f elements, backward 18h + 16h + 5f, and the log-sum-exp
    assert account.layers == 12 * 8 * 512 * (2 * (52 * h + 7 * f) + 12 * 12)
    assert account.embeddings == 8 * 512 * 18 * h
    assert account.lm_head == 8 * 80 * (14 * v + 20 * h)
    assert account.weights == 2 * 3 * p + 4 * p / 4 + 8 * p + 4 * p / 4
    assert account.update == 28 * p / 4
    assert account.total == pytest.approx(sum(account.parts().values()))
    # Tensor parallelism splits q, k, v, the attention output, the FFN and the vocabulary, not the
    # residual stream; accumulation adds the accumulator's read and write.
    split = aot.traffic_bytes(config, 8, 512, 80, p, param_shards=4, state_shards=4, tensor=2, accumulating=True)
    assert split.layers == 12 * 8 * 512 * (2 * (28 * h + 12 * h + 3.5 * f) + 6 * 12)
    assert split.weights == 2 * 3 * p / 2 + 4 * p / 4 + 8 * p / 2 + 4 * p / 4 + 8 * p / 4
    # Per token, roberta-base's layers move about 1.5 MB: 12 x 123 kB.
    assert 12 * (2 * (52 * h + 7 * f) + 144) == pytest.approx(1.476e6, rel=1e-3)


@pytest.mark.parametrize("config_path", ["configs/base.py", "configs/large.py"])
def test_the_configs_plans_shard_over_every_chip_and_accumulate_the_batch(config_path):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), config_path)
    plans = cli.load_module(path, "config file").PLANS
    assert len(plans) == 4 and {t.split("-")[0] for t in plans} == {"v4", "v5e", "v5p", "v6e"}
    for target, (num_chips, rows) in plans.items():
        c = cli.load_config(f"{path}:{target}")
        # The chips of the slice's topology (product of its dimensions) are the plan's chips.
        assert np.prod([int(d) for d in aot.topology_name(target).split(":")[1].split("x")]) == num_chips
        assert c.grad_accum_steps * num_chips * rows == c.batch_size == 8192
        assert dict(c.mesh) == {"data": 1, "fsdp": -1, "tensor": 1}
    assert cli.load_config(path).grad_accum_steps == 1  # no plan: the config as it was
    with pytest.raises(ValueError, match=r"no plan for 'v5p-31'; did you mean"):
        cli.load_config(f"{path}:v5p-31")


def test_the_report_sets_temporaries_against_the_accounting(host_compiled):
    from roberta_jax.tools.aot import format_report

    c, compiled = host_compiled
    reports = [aot.step_report("train_step", compiled.train), aot.step_report("eval_step", compiled.eval)]
    text = format_report("host", c, compiled, reports)
    needed = compiled.activation_bytes(reports[0])
    assert needed == aot.activation_bytes(compiled.model.config, 8, 64, scores_written=True)
    assert f"temporaries are {reports[0].temp_bytes / needed:.2f}x that" in text
    assert text.count("attention: xla (scores [B, N, L, L] written out)") == 2  # the CPU runs XLA's
    # On the CPU everything is in main memory: the HLO's traffic against the accounting, and its top operations.
    account = compiled.traffic()
    assert f"{reports[0].hbm_bytes / 1e9:.2f} GB of HBM traffic per chip per step" in text
    assert f"HBM traffic a step must move (aot.traffic_bytes): {account.total / 1e9:.2f} GB" in text
    assert text.count("operations moving the most HBM bytes") == 2
