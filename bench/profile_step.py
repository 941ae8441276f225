"""Where the time of our train step goes: traces a few steps and sums GPU kernel time by kernel.

    python bench/profile_step.py --model base --length 512 --batch 64 [--dump DIR]

Prints, per step, the busy time of the device against the wall time, the time by kind of
kernel (matmul, attention, fusions, random bits, ...) and the longest kernels with the HLO op
that launched them. Takes the same step options as `bench/step.py`. With `--dump`, also writes
the optimised HLO of the step there (for reading the fusions without a GPU).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step import add_step_options, build_ours  # noqa: E402

# First match wins; names are matched case-insensitively against the kernel name, then the HLO op.
KINDS = (
    ("attention", r"cudnn|fmha|flash|sdpa|attention"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|sm90_|cublas|triton_gemm|matmul|dot"),
    ("random bits", r"threefry|philox|rng"),
    ("scatter/gather", r"scatter|gather|dynamic.update.slice|dynamic.slice"),
    ("reduce fusions", r"reduce|softmax|norm"),
    ("copies", r"memcpy|memset|copy|transpose"),
    ("other fusions", r"fusion|loop|input|wrapped|convert|select|add|multiply"),
)


def kind_of(name: str, hlo_op: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.I) or re.search(pattern, hlo_op, re.I):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=40)
    add_step_options(parser)
    parser.add_argument("--dump", help="write the optimised HLO of the step into this directory")
    args = parser.parse_args()

    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_dump_to={args.dump} --xla_dump_hlo_as_text"
                                   " --xla_dump_hlo_module_re=.*train_step.*").strip()
    import jax

    step = build_ours(args.model, args.length, args.batch, args)
    for _ in range(args.warmup):
        step()
    logdir = tempfile.mkdtemp()
    t = time.perf_counter()
    with jax.profiler.trace(logdir):
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - t) / args.steps
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)

    by_kernel = collections.defaultdict(lambda: [0.0, 0, ""])
    busy = 0.0
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("Stream"):
                continue
            for event in line.events:
                stats = {k: v for k, v in event.stats}
                entry = by_kernel[event.name]
                entry[0] += event.duration_ns / 1e6
                entry[1] += 1
                entry[2] = entry[2] or str(stats.get("hlo_op", ""))
                busy += event.duration_ns / 1e6
    if not by_kernel:
        print("no GPU kernel events in the trace (not on a GPU?)")
        return
    n = args.steps
    print(f"{args.model} L{args.length} b{args.batch} prng={args.prng}: wall {1e3 * wall:.1f} ms/step, "
          f"kernels {busy / n:.1f} ms/step ({busy / n / (1e3 * wall):.0%} busy)")
    kinds = collections.Counter()
    for name, (ms, _, op) in by_kernel.items():
        kinds[kind_of(name, op)] += ms / n
    for kind, ms in kinds.most_common():
        print(f"  {kind:16} {ms:7.2f} ms  {ms / (busy / n):5.1%}")
    print(f"\n{'ms/step':>8} {'calls':>5}  kernel  [hlo op]")
    for name, (ms, calls, op) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{ms / n:8.3f} {calls // n:5d}  {name[:90]}  [{op[:40]}]")


if __name__ == "__main__":
    main()
