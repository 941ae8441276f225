"""Fine-tunes an HF-format checkpoint on the real data in `../shared/data` and prints each task's metrics.

    python bench/finetune_eval.py --init_from runs/tiny/hf
    python bench/finetune_eval.py --init_from path/to/roberta-base --tasks sst2,conll --max_train 0 --epochs 3

Each task runs `roberta_jax.finetune.run.finetune_and_evaluate` with its config from `configs/finetune/` (the recipe's
optimizer, warmup and weight decay) on a part of the data sized for a CPU: a random subset of the training
set (`--max_train`, 0 = all), the first `--max_eval` dev examples, `--epochs` epochs, float32 compute on
a CPU, rows no longer than the model's positions allow. SST-2 and CoNLL-2003 train on their train files and
evaluate on dev/valid; SQuAD has only `squad/dev-v1.1-part.json` there, so its articles are split: the last
four (765 questions) are the evaluation set, the first twenty the training set. A task whose files are
absent (SWAG is not in the shared data) is skipped with a line that says so. Runs go to
`WORKDIR/<task>/` (running the same command again resumes, or only re-evaluates a finished run); the
summary to `WORKDIR/summary.json`. For classification the majority-class accuracy of the dev set is
printed beside the result.

SST-2 from our own tiny pretrained model (`configs/tiny.py`: 4 layers, 128 wide, a 4,096-token BPE trained
on the demo corpus, 300 steps; 4.6 minutes of pretraining here):

    python train.py --config configs/tiny.py --workdir runs/tiny
    python bench/finetune_eval.py --init_from runs/tiny/hf --tasks sst2 --workdir runs/finetune_eval_tiny \
        --max_train 20000 --epochs 2 --lr 3e-4 --max_length 64

Measured on a 2-core CPU shared with other work: dev accuracy 0.752 (656 of 872; F1 0.763, Matthews 0.505)
against 0.509 for the majority class (444 of 872), 1,250 steps in 534 s of fine-tuning (8.9 minutes for
the whole command). With `--lr 1e-3` the same run reached 0.648.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs.common import SHARED_DATA  # noqa: E402
from roberta_jax.train import cli  # noqa: E402

# What the runs read from `--data_dir`, per task: (train, eval) files, or one file split by article (squad).
FILES = {
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv"),
    "conll": ("conll2003/train.txt", "conll2003/valid.txt"),
    "squad": ("squad/dev-v1.1-part.json", None),
    "swag": ("swag/train.csv", "swag/val.csv"),
}
# CPU-sized parts: (training examples, dev examples, epochs).
PARTS = {"sst2": (8000, 0, 1.0), "conll": (2000, 1000, 2.0), "squad": (1000, 300, 2.0), "swag": (2000, 500, 1.0)}
SQUAD_EVAL_ARTICLES = 4


def load_config(task: str):
    return cli.load_config(os.path.join(REPO, "configs", "finetune", f"{task}.py"))


def split_squad(path: str, out_dir: str) -> tuple[str, str]:
    """The SQuAD file's last `SQUAD_EVAL_ARTICLES` articles as the eval file, the others as the train file."""
    with open(path, encoding="utf-8") as f:
        squad = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    cut = len(squad["data"]) - SQUAD_EVAL_ARTICLES
    paths = []
    for name, articles in (("train", squad["data"][:cut]), ("eval", squad["data"][cut:])):
        paths.append(os.path.join(out_dir, f"squad-{name}.json"))
        with open(paths[-1], "w", encoding="utf-8") as f:
            json.dump({"version": squad.get("version", "1.1"), "data": articles}, f)
    return paths[0], paths[1]


def task_config(task: str, args, train_file: str, eval_file: str):
    """The task's config with the data, part, schedule and shapes of this evaluation."""
    import jax

    from roberta_jax.finetune import weights

    c = load_config(task)
    max_train, max_eval, epochs = PARTS[task]
    c.init_from = args.init_from
    c.data.update(train_file=train_file, eval_file=eval_file,
                  max_train_examples=max_train if args.max_train is None else args.max_train,
                  max_eval_examples=max_eval if args.max_eval is None else args.max_eval)
    c.num_epochs = epochs if args.epochs is None else args.epochs
    if args.lr is not None:
        c.optimizer.peak_lr = args.lr
    if args.batch_size is not None:
        c.batch_size = args.batch_size
    limit = weights.max_length_limit(weights.initial_config(args.init_from))
    c.data.max_length = min(args.max_length or c.data.max_length, limit)
    c.data.doc_stride = min(c.data.doc_stride, c.data.max_length // 2)
    if jax.default_backend() == "cpu":
        c.dtype = "float32"  # bfloat16 matmuls are slow on most CPUs
    # One evaluation and one checkpoint, at the end.
    c.eval_every_steps = c.checkpoint.every_steps = 10**9
    c.progress = args.progress
    return c


def majority_baseline(config) -> float:
    """Accuracy of always answering the dev set's most frequent label."""
    from roberta_jax.finetune import tasks

    examples = tasks.get_task(config.task).read_split(config, config.data.eval_file)
    if config.data.max_eval_examples:
        examples = examples[: config.data.max_eval_examples]
    counts = collections.Counter(e.label for e in examples)
    return max(counts.values()) / len(examples)


def run_task(task: str, args) -> dict | None:
    from roberta_jax.finetune import run

    train, dev = (os.path.join(args.data_dir, f) if f else None for f in FILES[task])
    missing = [p for p in (train, dev) if p and not os.path.isfile(p)]
    if missing:
        print(f"{task}: skipped, no {', '.join(missing)}", flush=True)
        return None
    workdir = os.path.join(args.workdir, task)
    if task == "squad":
        train, dev = split_squad(train, os.path.join(workdir, "data"))
    config = task_config(task, args, train, dev)
    print(f"{task}: fine-tuning from {args.init_from} in {workdir}", flush=True)
    start = time.perf_counter()
    results = run.finetune_and_evaluate(config, workdir)
    summary = {
        "task": task, "wall_s": round(time.perf_counter() - start, 1), "steps": results["final_step"],
        "max_train_examples": config.data.max_train_examples, "max_eval_examples": config.data.max_eval_examples,
        "epochs": config.num_epochs, "peak_lr": config.optimizer.peak_lr, "batch_size": config.batch_size,
        "max_length": config.data.max_length,
        "final": {k.removeprefix("eval/"): round(v, 4) for k, v in results["final"].items()
                  if not k.startswith("eval/best_")},
    }
    if task == "sst2":
        summary["majority_baseline_accuracy"] = round(majority_baseline(config), 4)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init_from", required=True, help="an HF-format directory (config.json, model.safetensors, "
                        "tokenizer files) or a pretraining workdir")
    parser.add_argument("--tasks", default="sst2,conll,squad,swag", help="comma-separated, of " + ",".join(FILES))
    parser.add_argument("--data_dir", default=SHARED_DATA)
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "finetune_eval"))
    parser.add_argument("--max_train", type=int, default=None, help="training examples per task (0 = all)")
    parser.add_argument("--max_eval", type=int, default=None, help="dev examples per task (0 = all)")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the config's)")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--max_length", type=int, default=None, help="tokens per row (default: the config's, "
                        "or fewer where the model's positions end)")
    parser.add_argument("--progress", action="store_true", help="show the progress line")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(FILES))
    if unknown:
        parser.error(f"unknown tasks {unknown}; the tasks are {sorted(FILES)}")
    logging.getLogger("absl").setLevel(logging.WARNING)

    summaries = [s for s in (run_task(t, args) for t in tasks) if s is not None]
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summaries, f, indent=2)
    print(f"\n{'task':<7} {'train':>6} {'eval':>5} {'steps':>6} {'wall':>7}  metrics")
    for s in summaries:
        extra = f"  (majority baseline accuracy {s['majority_baseline_accuracy']})" \
            if "majority_baseline_accuracy" in s else ""
        metrics = ", ".join(f"{k} {v}" for k, v in s["final"].items())
        print(f"{s['task']:<7} {s['max_train_examples'] or 'all':>6} {s['max_eval_examples'] or 'all':>5} "
              f"{s['steps']:>6} {s['wall_s']:>6.0f}s  {metrics}{extra}")


if __name__ == "__main__":
    main()
