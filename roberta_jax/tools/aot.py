"""Compile a config's train and eval steps for a TPU slice from any host, and print what they need per chip.

    python -m roberta_jax.tools.aot --config configs/base.py --target v5p-32
    python -m roberta_jax.tools.aot --config configs/base.py --target v5e:4x4 --config.batch_size=128
    python -m roberta_jax.tools.aot --config configs/base.py --target host       # this machine's GPUs/CPU
    python -m roberta_jax.tools.aot ... --dump_hlo /tmp/hlo                       # keep the optimized HLO (or gs://)
    python -m roberta_jax.tools.aot ... --hbm_gib 4                               # as if each chip had 4 GiB

Takes the same config file and `--config.*` overrides as train.py. TPU targets need libtpu
(`pip install -e '.[tpu]'`); no TPU is used, only its compiler. The report: per chip, parameters +
optimizer state, the program's arguments, outputs, temporaries and code against the chip's HBM (fits
with 10% headroom or not), the largest buffers live at the peak with the operations that wrote them;
FLOPs and HBM traffic per step (read from the optimized HLO: XLA's own "bytes accessed" counts the traffic
through on-chip memory too), the traffic against what the step must move (`aot.traffic_bytes`), the
operations moving the most HBM bytes, and the roofline bound on step time, tokens/s and MFU.

XLA's TPU compiler spends the HBM it has: on a chip that is mostly free, the temporaries include
all-gathers started early and loose packing. `--hbm_gib` compiles as if each chip had that much HBM, and
shows what the same step needs on a fuller chip (more FLOPs if XLA has to rematerialise to fit).
"""

from __future__ import annotations

import contextlib
import tempfile

from absl import flags
from ml_collections import config_flags

from roberta_jax import storage
from roberta_jax.train import aot, chips, cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
_TARGET = flags.DEFINE_string("target", "host", "v5p-32 | v5e:4x4 | ... | host")
_DUMP = flags.DEFINE_string("dump_hlo", "", "directory (local or gs://) for the optimized HLO and buffer assignment")
_BUFFERS = flags.DEFINE_integer("buffers", 8, "largest live buffers to list per step")
_HBM = flags.DEFINE_float("hbm_gib", None, "compile as if each chip had this much HBM (TPU targets)")
_TOP = flags.DEFINE_integer("top", 10, "operations moving the most HBM bytes to list per step")


def format_report(target: str, config, compiled: aot.CompiledSteps, reports: list[aot.StepReport],
                  top: int = 10) -> str:
    """The report as text: one section per step."""
    device = compiled.mesh.devices.flat[0]
    chip = chips.chip_for(device.device_kind)
    n = compiled.mesh.devices.size
    lines = [f"{target}: {n} x {device.device_kind}, mesh {dict(compiled.mesh.shape)}, global batch "
             f"{config.batch_size} x {config.data.max_seq_length}, grad_accum_steps {config.grad_accum_steps}, "
             f"remat {config.remat or 'none'}, dtype {config.dtype}",
             f"  params + optimizer state per chip: {_gib(compiled.state_bytes)}"]
    for report in reports:
        lines += _step_lines(report, chip, compiled, config, n, top)
    return "\n".join(lines)


def _step_lines(report: aot.StepReport, chip, compiled, config, n: int, top: int) -> list[str]:
    hbm = ""
    if compiled.hbm_bytes:
        hbm = (f" compiled for {_gib(compiled.hbm_bytes)} of HBM (--hbm_gib; the chip has "
               f"{_gib(chip.hbm_bytes) if chip else 'unknown'}): {_fits(report.total_bytes, compiled.hbm_bytes)}")
    elif chip:
        hbm = f" of {_gib(chip.hbm_bytes)} HBM: {_fits(report.total_bytes, chip.hbm_bytes)}"
    lines = [f"  {report.name}: {_gib(report.total_bytes)} per chip{hbm}",
             f"    arguments {_gib(report.argument_bytes)}, outputs {_gib(report.output_bytes)}, "
             f"temporaries {_gib(report.temp_bytes)}{_live(report)}, code {_gib(report.code_bytes)}",
             f"    {report.flops / 1e12:.3f} TFLOP and {report.hbm_bytes / 1e9:.2f} GB of HBM traffic per chip per "
             f"step (XLA's bytes accessed, on-chip memory included: {report.bytes_accessed / 1e9:.2f} GB)",
             f"    attention: {ATTENTION[report.attention]}"]
    if report.name == "train_step":
        lines += _traffic_lines(report, compiled.traffic(), chip)
    if chip and report.name == "train_step":
        bound = compiled.train_roofline(report, chip)
        per = "step" if compiled.grad_accum_steps == 1 else f"microbatch (1 of {compiled.grad_accum_steps})"
        lines.append(f"    roofline ({bound.bound}-bound): {per} >= {bound.step_seconds * 1e3:.1f} ms, "
                     f"<= {bound.tokens_per_second_per_chip:,.0f} tokens/s per chip, MFU <= {bound.mfu:.1%}")
    if report.name == "train_step":
        needed = compiled.activation_bytes(report)
        lines.append(f"    activations a backward pass keeps ({compiled.rows_per_device} rows per chip; Korthikanti "
                     f"et al. 2022): {_gib(needed)}; temporaries are {report.temp_bytes / needed:.2f}x that")
    if report.traffic is not None and top:
        lines.append("    operations moving the most HBM bytes (instructions of every layer together):")
        lines += [f"    {total / 1e9:>7.2f} GB {count:>5} x {operation[:110]}"
                  for operation, count, total in report.traffic.top(top)]
    for buffer in report.peak_buffers:
        lines.append(f"    {_gib(buffer.bytes):>10}  {buffer.shapes[:100]}")
        lines += [f"                {op}" for op in buffer.ops]
    return lines


def _traffic_lines(report: aot.StepReport, account: aot.TrafficAccount, chip) -> list[str]:
    """The step's HBM traffic against `aot.traffic_bytes`, part by part, and its FLOPs per HBM byte."""
    parts = ", ".join(f"{name.replace('_', ' ')} {size / 1e9:.2f}" for name, size in account.parts().items())
    balance = f" (the chip's balance: {chip.peak_flops / chip.hbm_bandwidth:.0f})" if chip else ""
    return [f"    HBM traffic a step must move (aot.traffic_bytes): {account.total / 1e9:.2f} GB ({parts}); "
            f"compiled: {report.hbm_bytes / account.total:.2f}x that",
            f"    {report.flops / report.hbm_bytes:.0f} FLOP per HBM byte{balance}"]


ATTENTION = {"splash": "splash (Pallas TPU flash-attention kernel)", "cudnn": "cudnn (fused flash attention)",
             "xla": "xla (scores [B, N, L, L] written out)"}


def _live(report: aot.StepReport) -> str:
    if report.peak_live_bytes is None:
        return ""
    return f" ({_gib(report.peak_live_bytes)} live at the schedule's peak, the rest packing)"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _fits(need: float, hbm: float) -> str:
    return "fits" if need <= aot.HEADROOM * hbm else f"does NOT fit (over {aot.HEADROOM:.0%} of HBM)"


def main(argv):
    del argv
    config, target = _CONFIG.value, _TARGET.value
    hbm = None if _HBM.value is None else int(_HBM.value * 2**30)
    # XLA dumps into a local directory: --dump_hlo itself, or one uploaded to it at the end (storage.local_dir).
    dump_dir = (storage.local_dir(_DUMP.value) if _DUMP.value
                else contextlib.nullcontext(tempfile.mkdtemp(prefix="roberta_aot_")))
    with dump_dir as dump:
        compiled = aot.compile_steps(config, aot.target_devices(target), dump_dir=dump, hbm_bytes=hbm)
        reports = [aot.step_report(name, step, dump, _BUFFERS.value)
                   for name, step in (("train_step", compiled.train), ("eval_step", compiled.eval))]
    print(format_report(target, config, compiled, reports, _TOP.value))
    if _DUMP.value:
        print(f"optimized HLO and buffer assignment in {_DUMP.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
