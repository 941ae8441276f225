"""A downstream suite: every benchmark x grid point x seed fine-tuned from one model, then medians over seeds.

    python -m roberta_jax.tools.suite run --config configs/suites/glue.py --workdir runs/glue \\
        --model runs/base [--tasks sst2,rte] [--seeds 1,2,3] [--grid optimizer.peak_lr=1e-5,2e-5] \\
        [--set num_epochs=3] [--data sst2=../shared/data/sst2] [--shard 0/4] [--print-plan]
    python -m roberta_jax.tools.suite report --workdir runs/glue

`--model` is what fine-tuning's `init_from` takes (an HF directory, a pretraining workdir, local or gs://), or
`random:PATH`: PATH's architecture and tokenizer with fresh weights, the baseline. Each run fine-tunes in
WORKDIR/runs/<task>/<grid point>/seed<k> in this process (`finetune.run.finetune_and_evaluate`); a run with
`eval_results.json` is done and skipped, so running the suite again resumes it (an unfinished run resumes
from its checkpoint). WORKDIR/suite.json records the model and the plan; a rerun that changes either stops
and names the field. `--shard i/n` runs every n-th run of the plan from the i-th (0-based): n machines with
the same command and workdir share the plan exactly. `report` (also written after `run`) takes, per task,
the median over seeds of each grid point and the point with the best median of the task's first headline
metric (RoBERTa's protocol), into WORKDIR/results.md, results.csv and results.json
(`tools.suite_report`), published fairseq numbers beside.

A suite config (`configs/suites/*.py`) has `tasks` and `seeds` (comma-separated), `grid` and `set` (lists
of "key=values" over fine-tuning config fields, as `tools.sweep`'s flags), `task_set` ({task: [key=value]}),
`data_root` (each benchmark's `folder` under it) and `data` ({task: directory, or "hf" for the `datasets`
hub}), `results` ("best": each run's best evaluation, or "final").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence

import ml_collections

from roberta_jax import storage
from roberta_jax.finetune import benchmarks
from roberta_jax.tools import suite_report, sweep
from roberta_jax.train import cli
from roberta_jax.train import workdir as workdir_files

SUITE_FILE = "suite.json"
RANDOM_PREFIX = "random:"


@dataclasses.dataclass(frozen=True)
class SuiteRun:
    """One fine-tuning run: its task, grid point (name and overrides), seed and workdir."""

    task: str
    point: str
    seed: int
    workdir: str
    overrides: dict[str, str]

    def done(self) -> bool:
        return storage.isfile(storage.join(self.workdir, workdir_files.RESULTS))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a suite runs, as suite.json records it (`record`); `runs` in order: task, grid point, seed."""

    workdir: str
    model: str
    tasks: list[str]
    seeds: list[int]
    grid: list[str]
    sets: list[str]
    task_sets: dict[str, list[str]]
    data: dict[str, str]
    results: str
    runs: list[SuiteRun]

    def record(self) -> dict:
        fields = dataclasses.asdict(self)
        del fields["runs"], fields["workdir"]  # a suite's directory may move
        return fields


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def model_init(model: str) -> tuple[str, bool]:
    """(init_from, init_random) of `--model`: `random:PATH` is PATH with fresh weights; local paths absolute."""
    init_random = model.startswith(RANDOM_PREFIX)
    path = model[len(RANDOM_PREFIX):] if init_random else model
    if not path:
        raise ValueError(f"--model {model!r}: expected a directory (HF, or a pretraining workdir) or random:PATH")
    return (path if storage.local_path(path) is None else os.path.abspath(path)), init_random


def merge_grid(config_grid: Sequence[str], cli_grid: Sequence[str]) -> list[str]:
    """The config's grid with each `--grid KEY=...` replacing the config's axis of that KEY (or adding one)."""
    given = {g.partition("=")[0].strip(): g for g in cli_grid}
    merged = [given.pop(g.partition("=")[0].strip(), g) for g in config_grid]
    return merged + list(given.values())


def data_dirs(suite: ml_collections.ConfigDict, tasks: list[str], cli_data: Sequence[str]) -> dict[str, str]:
    """{task: data directory (absolute) or "hf"}: `--data TASK=DIR`, the config's `data`, else data_root/folder."""
    given = dict(suite.get("data", {}))
    for text in cli_data:
        task, sep, path = text.partition("=")
        if not sep or not path:
            raise ValueError(f"--data {text!r}: expected TASK=DIR (or TASK=hf)")
        given[task.strip()] = path.strip()
    for task in sorted(set(given) - set(tasks)):
        benchmarks.get_benchmark(task)  # a misspelt name is an error naming the nearest; another task's, unused
    out = {}
    for task in tasks:
        path = given.get(task) or storage.join(suite.get("data_root", ""), benchmarks.get_benchmark(task).folder)
        out[task] = path if path == "hf" or storage.local_path(path) is None else os.path.abspath(path)
    return out


def make_plan(suite: ml_collections.ConfigDict, workdir: str, model: str, tasks: str = "", seeds: str = "",
              grid: Sequence[str] = (), sets: Sequence[str] = (), data: Sequence[str] = ()) -> Plan:
    """The plan of `suite` (a suite config) with the command line's choices; every key checked against each
    task's fine-tuning config (an unknown key names the nearest), every value against its field's type."""
    task_names = _csv(tasks or suite.tasks)
    for task in task_names:
        benchmarks.get_benchmark(task)
    seed_text = _csv(seeds or suite.seeds)
    if not all(s.lstrip("-").isdigit() for s in seed_text):
        raise ValueError(f"seeds {','.join(seed_text)!r}: expected comma-separated integers")
    seed_list = [int(s) for s in seed_text]
    if not task_names or not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"a suite needs tasks and distinct seeds; got tasks={task_names} seeds={seed_list}")
    grid_list = merge_grid(list(suite.get("grid", [])), grid)
    set_list = [*suite.get("set", []), *sets]
    # A --set wins over the config's, its task_set's too: the command line has the last word.
    given = {text.partition("=")[0].strip() for text in sets}
    task_sets = {t: [kv for kv in v if kv.partition("=")[0].strip() not in given]
                 for t, v in dict(suite.get("task_set", {})).items() if t in task_names}
    dirs = data_dirs(suite, task_names, data)
    runs = []
    for task in task_names:
        config = benchmarks.finetune_config(benchmarks.get_benchmark(task), dirs[task], dirs[task] == "hf")
        points, _ = sweep.expand(config, grid_list, [*set_list, *task_sets.get(task, [])],
                                 storage.join(workdir, "runs", task))
        for point in points:
            name = "default" if point.name == "run" else point.name
            runs += [SuiteRun(task, name, seed, storage.join(workdir, "runs", task, name, f"seed{seed}"),
                              point.overrides) for seed in seed_list]
    init_from, init_random = model_init(model)  # recorded resolved: runs/x and ./runs/x are one model
    model = RANDOM_PREFIX + init_from if init_random else init_from
    results = suite.get("results", "best")
    if results not in ("best", "final"):
        raise ValueError(f"suite config: results={results!r}; expected 'best' or 'final'")
    return Plan(workdir, model, task_names, seed_list, grid_list, set_list, task_sets, dirs, results, runs)


def shard(runs: list[SuiteRun], spec: str) -> list[SuiteRun]:
    """The runs of shard `i/n`: every n-th from the i-th; the n shards partition the plan."""
    index, sep, count = spec.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise ValueError(f"--shard {spec!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return runs[int(index)::int(count)]


def check_suite_file(workdir: str, plan: Plan) -> None:
    """Writes WORKDIR/suite.json, or checks the plan against it: a different model or plan stops, named."""
    path = storage.join(workdir, SUITE_FILE)
    recorded = storage.read_json(path)
    current = plan.record()
    if recorded is None:
        storage.makedirs(workdir)
        storage.write_json(path, current, indent=2)
        return
    changed = [k for k in current if recorded.get(k) != current[k]]
    if changed:
        k = changed[0]
        raise ValueError(f"{path}: this suite was run with {k}={recorded.get(k)!r}, not {current[k]!r}"
                         f"{' (and ' + ', '.join(changed[1:]) + ')' if changed[1:] else ''}; use another "
                         "--workdir, or the same model and plan")


def run_config(plan: Plan, run: SuiteRun) -> ml_collections.ConfigDict:
    """The fine-tuning config of one run: the benchmark's, the suite's sets, the grid point, seed and model."""
    directory = plan.data[run.task]
    bench = benchmarks.get_benchmark(run.task)
    if directory == "hf":
        directory = benchmarks.hf_splits(bench, storage.join(plan.workdir, "data", run.task))
    config = benchmarks.finetune_config(bench, directory, plan.data[run.task] == "hf")
    fields = sweep.config_fields(config)
    overrides = [*plan.sets, *plan.task_sets.get(run.task, [])]
    pairs = [text.partition("=")[::2] for text in overrides] + list(run.overrides.items())
    for key, value in pairs:
        key = key.strip()
        benchmarks._set(config, key, sweep.parse_value(key, value, fields[key]))
    config.init_from, config.init_random = model_init(plan.model)
    config.seed = run.seed
    config.progress = False
    return config


def run_suite(plan: Plan, runs: list[SuiteRun], finetune=None) -> tuple[int, int]:
    """Fine-tunes every run of `runs` not done yet, one after another; returns (run now, failed). A run that
    fails is reported and left without results (the next `run` retries it); an interrupt stops the suite."""
    if finetune is None:
        from roberta_jax.finetune.run import finetune_and_evaluate as finetune
    ran = failed = 0
    for index, run in enumerate(runs, 1):
        where = f"[{index}/{len(runs)}] {run.task} {run.point} seed{run.seed}"
        if run.done():
            print(f"{where}: done, skipped", flush=True)
            continue
        start = time.perf_counter()
        try:
            results = finetune(run_config(plan, run), run.workdir)
        except (ValueError, FileNotFoundError, RuntimeError) as err:  # bad data or a diverged run: go on
            failed += 1
            print(f"{where}: FAILED: {err}", file=sys.stderr, flush=True)
            continue
        ran += 1
        print(f"{where}: {results['best_metric']} {results['best'].get(results['best_metric'], float('nan')):.4f} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
    return ran, failed


def print_plan(runs: list[SuiteRun]) -> None:
    for run in runs:
        overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items()) or "-"
        print(f"{'done' if run.done() else 'todo'}  {run.task}  {run.point}  seed{run.seed}  {overrides}  "
              f"{run.workdir}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roberta_jax.tools.suite", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = cli.add_verbose(sub.add_parser("run", help="fine-tune every task x grid point x seed, then report"))
    run.add_argument("--config", required=True, help="suite config file (configs/suites/*.py[:arg])")
    run.add_argument("--workdir", required=True)
    run.add_argument("--model", required=True, help="HF directory, pretraining workdir, gs:// path or random:PATH")
    run.add_argument("--tasks", default="", help="comma-separated benchmarks (default: the config's)")
    run.add_argument("--seeds", default="", help="comma-separated seeds (default: the config's)")
    run.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="replaces the config's axis")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a fine-tuning field, every run")
    run.add_argument("--data", action="append", default=[], metavar="TASK=DIR", help="a task's data (or TASK=hf)")
    run.add_argument("--shard", default="0/1", metavar="I/N", help="run every N-th run from the I-th (0-based)")
    run.add_argument("--print-plan", action="store_true", help="list the runs (done or todo), run nothing")
    report = cli.add_verbose(sub.add_parser("report", help="medians over seeds, best grid point, tables"))
    report.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, args.verbose):
        if args.command == "report":
            print(suite_report.write_report(args.workdir))
            return 0
        plan = make_plan(cli.load_config(args.config), args.workdir, args.model, args.tasks, args.seeds, args.grid,
                         args.set, args.data)
        runs = shard(plan.runs, args.shard)
        if args.print_plan:
            print_plan(runs)
            return 0
        check_suite_file(args.workdir, plan)
        cli.quiet_libraries()
        ran, failed = run_suite(plan, runs)
        print(suite_report.write_report(args.workdir))
        print(f"{ran} runs fine-tuned, {failed} failed, {len(runs) - ran - failed} already done", file=sys.stderr)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
