"""The TPU slices `configs/base.py` and `configs/large.py` are planned for, compiled from this host.

    python bench/tpu_plans.py                                    # every plan of both configs
    python bench/tpu_plans.py --configs configs/base.py --plans v5p-32

For each planned slice (a config's `PLANS`: chips and rows of 512 per chip per microbatch) it compiles
the exact train step train.py would run there (`aot.compile_steps` through libtpu's topology
description; no TPU is used) and prints one markdown row: per chip, parameters + optimizer state,
temporaries against the activations the backward pass needs (`aot.activation_bytes`), the program's
total against the chip's HBM, the attention that ran, the HBM traffic of one microbatch and the update
(read from the optimized HLO) against what it must move (`aot.traffic_bytes`), per token and per FLOP,
and the roofline bound on tokens/s and MFU.
Needs libtpu (`pip install -e '.[tpu]'`). roberta-large compiles in minutes on a small CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from roberta_jax.train import aot, chips, cli  # noqa: E402

HEADER = ("| config | slice | chips x rows x accumulation | attention | params + opt. state | temporaries "
          "(x activations) | per chip / HBM | fits | HBM traffic per microbatch (x accounting) | HBM bytes per token "
          "| FLOP per HBM byte | roofline tokens/s per chip | MFU bound | compile |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def plan_row(config_path: str, target: str) -> str:
    """One compiled plan as a markdown table row."""
    config = cli.load_config(f"{config_path}:{target}")
    start = time.perf_counter()
    compiled = aot.compile_steps(config, aot.target_devices(target), eval_step=False)
    seconds = time.perf_counter() - start
    report = aot.step_report("train_step", compiled.train)
    chip = chips.chip_for(compiled.mesh.devices.flat[0].device_kind)
    n = compiled.mesh.devices.size
    bound = compiled.train_roofline(report, chip)
    account = compiled.traffic()
    tokens = compiled.rows_per_device * compiled.length
    gib = 2**30
    return (f"| {os.path.basename(config_path)} | {target} | {n} x {compiled.rows_per_device} x "
            f"{config.grad_accum_steps} | {report.attention} | {compiled.state_bytes / gib:.2f} GiB | "
            f"{report.temp_bytes / gib:.2f} GiB ({report.temp_bytes / compiled.activation_bytes(report):.2f}x) | "
            f"{report.total_bytes / gib:.1f} / {chip.hbm_bytes / gib:.0f} GiB | "
            f"{'yes' if report.total_bytes <= aot.HEADROOM * chip.hbm_bytes else 'NO'} | "
            f"{report.hbm_bytes / 1e9:.1f} GB ({report.hbm_bytes / account.total:.2f}x) | "
            f"{report.hbm_bytes / tokens / 1e3:.0f} kB | {report.flops / report.hbm_bytes:.0f} | "
            f"{bound.tokens_per_second_per_chip:,.0f} | {bound.mfu:.0%} | {seconds / 60:.1f} min |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="configs/base.py,configs/large.py")
    parser.add_argument("--plans", default="", help="accelerator types to compile (default: every plan)")
    args = parser.parse_args()
    print(HEADER, flush=True)
    for path in args.configs.split(","):
        plans = cli.load_module(path, "config file").PLANS
        for target in args.plans.split(",") if args.plans else plans:
            if target in plans:
                print(plan_row(path, target), flush=True)


if __name__ == "__main__":
    main()
