"""`train.py` against the bare step: does the whole training program keep the step's pace?

    python bench/train_throughput.py                        # base, length 512, batch 64, 60 steps
    python bench/train_throughput.py --model tiny --length 128 --batch 8 --steps 30   # CPU smoke

Runs `train.py --config configs/base.py` (the model fields from `--model`'s preset) on the demo
corpus in the repo with the roberta-base tokenizer from tests/data, logging every step to
metrics.jsonl and TensorBoard every 10 steps, checkpointing every `--checkpoint-every` steps,
then times `bench/step.py`'s bare step (no data, no logging, no checkpoints) on the same shapes,
each in its own process. Prints tokens/s of both, train.py's as the median and the mean over the
steps after `--skip` (the mean carries the checkpoint saves), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def train_overrides(args, workdir: str) -> list[str]:
    from roberta_jax.model.config import PRESETS

    arch = {k: v for k, v in PRESETS[args.model].items()
            if k not in ("vocab_size",)}  # the vocabulary is the tokenizer's
    settings = {
        **{f"model.{k}": v for k, v in arch.items()},
        "data.train_files": os.path.join(REPO, "data", "demo_corpus.txt"),
        "data.max_seq_length": args.length,
        "tokenizer.path": os.path.join(REPO, "tests", "data", "roberta-base"),
        "batch_size": args.batch,
        "total_steps": args.steps,
        "optimizer.warmup_steps": 10,
        "log_every_steps": 10,
        "checkpoint.every_steps": args.checkpoint_every,
        "eval_every_steps": 10 * args.steps,  # no evaluation inside the timed steps
        "export_hf": False,
        "progress": False,
    }
    return [sys.executable, os.path.join(REPO, "train.py"), "--config", os.path.join(REPO, "configs", "base.py"),
            "--workdir", workdir] + [f"--config.{k}={v}" for k, v in settings.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10, help="first steps left out (compilation, warm-up)")
    parser.add_argument("--checkpoint-every", type=int, default=20)
    args = parser.parse_args()

    from roberta_jax.train import workdir as workdir_files

    with tempfile.TemporaryDirectory() as workdir:
        cmd = train_overrides(args, workdir)
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"train.py failed:\n{out.stderr[-3000:]}")
        with open(os.path.join(workdir, workdir_files.METRICS), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        per_step = [r["perf/tokens_per_sec"] for r in rows if "perf/tokens_per_sec" in r and r["step"] > args.skip]
        saved = sorted(os.listdir(os.path.join(workdir, workdir_files.CHECKPOINTS)))
    # Mean throughput over the window: total tokens over total time, checkpoint steps included.
    tokens = args.batch * args.length
    train_median = statistics.median(per_step)
    train_mean = len(per_step) * tokens / sum(tokens / t for t in per_step)

    step_cmd = [sys.executable, os.path.join(REPO, "bench", "step.py"), "--one", "ours", args.model,
                str(args.length), str(args.batch), "--steps", "20", "--warmup", "5", "--attention", "",
                "--hidden-dropout", "0.1", "--vocab-size", "50265"]  # roberta-base's vocabulary, as train.py's
    out = subprocess.run(step_cmd, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"bench/step.py failed:\n{out.stderr[-3000:]}")
    result = json.loads(line[7:])
    bench = tokens / statistics.median(result["times"])

    print(f"{args.model} length {args.length} batch {args.batch} on {result['device']}: "
          f"{len(per_step)} train.py steps after step {args.skip}, checkpoints {saved}")
    print(f"  bench/step.py bare step      {bench:12,.0f} tokens/s (median)")
    print(f"  train.py, median step        {train_median:12,.0f} tokens/s  {train_median / bench:6.1%} of the step")
    print(f"  train.py, mean incl. saves   {train_mean:12,.0f} tokens/s  {train_mean / bench:6.1%} of the step")


if __name__ == "__main__":
    main()
