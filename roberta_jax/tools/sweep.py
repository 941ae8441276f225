"""Grid sweeps over `train.py`: one workdir per combination of config overrides, then a comparison.

    python -m roberta_jax.tools.sweep run --config configs/tiny.py --workdir runs/sweep \\
        --grid optimizer.peak_lr=1e-4,3e-4,6e-4 --grid model.hidden_dropout_prob=0,0.1 --set total_steps=200
    python -m roberta_jax.tools.sweep run ... --print-only     # one `python train.py ...` line per run
    python -m roberta_jax.tools.sweep compare --workdir runs/sweep --metric eval/loss --plot runs/sweep/eval_loss.png

    python -m roberta_jax.tools.sweep run --config configs/tiny.py --workdir runs/ablations \\
        --runs configs/sweeps/roberta_ablations.py                # named runs: {name: overrides}
    python -m roberta_jax.tools.sweep run ... --suite configs/suites/tiny_cpu.py   # + downstream, per run

`run` expands the cartesian product of the `--grid` values (each run also gets every `--set`),
or takes the named runs of a `--runs` file's `get_runs()` (for sweeps that are not a product),
checks every key against the config (an unknown key names the nearest valid one) and parses each
value with the type of the field it replaces. Run `peak_lr=3e-4,hidden_dropout_prob=0.1` trains in
WORKDIR/peak_lr=3e-4,hidden_dropout_prob=0.1 (the full dotted key where two keys end alike), where
train.py writes its resolved `train_config.json`. Runs go one after another, each as its own
`train.py` process with its output in `train.log`: the command `--print-only` prints for a cluster
launcher, run with this interpreter. Running a sweep again resumes each run from its newest checkpoint.
`WORKDIR/sweep.json` lists the runs and their overrides for `compare`.

With `--suite SUITE.py` (and the suite's `--suite-data TASK=DIR`, `--suite-set KEY=VALUE`), each run that
trains is then fine-tuned downstream: `python -m roberta_jax.tools.suite run --config SUITE.py --workdir
RUN/suite --model RUN`, logged in the same train.log; `compare` adds each task's median headline score
(RUN/suite/results.json) as a column.

`compare` reads each run's scalars (TensorBoard events, else metrics.jsonl), prints a table
(run, overrides, final train loss, best and final value of the metric, steps) best run first,
and with `--plot` draws the metric against the step, one line per run.

The sweep's WORKDIR (and `--plot`) may be local or on `gs://`: there each run's `train.log`, which a bucket
cannot append to, is written whole when its run ends (earlier logs of the run kept at its start).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from roberta_jax import storage
from roberta_jax.suggest import did_you_mean
from roberta_jax.tools import events, suite_report
from roberta_jax.train import cli

# The checkout root (roberta_jax/tools/sweep.py is three levels down), where train.py lives.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_FILE = "sweep.json"
SUITE_DIR = "suite"  # a run's downstream suite workdir, under the run's
_TRUE, _FALSE = ("true", "t", "yes", "1"), ("false", "f", "no", "0")
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of the grid: its directory name, workdir and overrides (key → value as written)."""

    name: str
    workdir: str
    overrides: dict[str, str]


def config_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every leaf of `config` as {"dotted.key": value}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(config_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_key(fields: dict[str, Any], key: str) -> None:
    """Raises ValueError naming the nearest valid key when `key` is not a config field."""
    if key not in fields:
        # Any key is a better hint than none: a bare `peak_lr` should still lead to `optimizer.peak_lr`.
        raise ValueError(f"unknown config key {key!r}{did_you_mean(key, fields, cutoff=0.0)}")


def parse_value(key: str, raw: str, current: Any) -> Any:
    """`raw` as the type of the field's current value (bool, int, float or str)."""
    try:
        if isinstance(current, bool):
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(raw)
            return raw.lower() in _TRUE
        if isinstance(current, int):
            number = float(raw)
            if not number.is_integer():
                raise ValueError(raw)
            return int(number)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        expected = _TYPE_NAMES[type(current)]
        raise ValueError(f"{key}={raw!r}: expected {expected}, like the default {current!r}") from None
    return raw


def _key_value(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{option} {text!r}: expected KEY=VALUE")
    return key.strip(), value


def expand(
    config: ml_collections.ConfigDict, grid: Sequence[str], sets: Sequence[str], workdir: str
) -> tuple[list[Run], dict[str, str]]:
    """The runs of `--grid key=v1,v2` (cartesian product, in order) and the common `--set key=v`
    overrides, each key and value checked against `config`."""
    fields = config_fields(config)
    axes, common = {}, {}
    for text in grid:
        key, values = _key_value(text, "--grid")
        if key in axes:
            raise ValueError(f"--grid {key} is given twice; list all its values in one --grid")
        axes[key] = [v.strip() for v in values.split(",") if v.strip()]
        if not axes[key]:
            raise ValueError(f"--grid {text!r} has no values")
    for text in sets:
        key, value = _key_value(text, "--set")
        if key in axes:
            raise ValueError(f"{key} is both swept (--grid) and fixed (--set)")
        common[key] = value
    for key, values in {**axes, **{k: [v] for k, v in common.items()}}.items():
        check_key(fields, key)
        for value in values:
            parse_value(key, value, fields[key])
    short = _short_names(list(axes))
    runs = []
    for values in itertools.product(*axes.values()):
        overrides = dict(zip(axes, values))
        name = ",".join(f"{short[k]}={v}" for k, v in overrides.items()).replace("/", "_") or "run"
        runs.append(Run(name, storage.join(workdir, name), overrides))
    return runs, common


def named_runs(
    config: ml_collections.ConfigDict, runs: dict[str, dict[str, Any]], sets: Sequence[str], workdir: str
) -> tuple[list[Run], dict[str, str]]:
    """The runs of a runs file, {name: {key: value}} in order, and the common `--set` overrides, each key
    and value checked against `config`: for sweeps that are not a product (the rows of a paper's table)."""
    fields = config_fields(config)
    common = dict(_key_value(text, "--set") for text in sets)
    out = []
    for name, overrides in runs.items():
        if not name or "/" in name:
            raise ValueError(f"run name {name!r}: expected a non-empty name without '/'")
        overrides = {k: _flag_value(v) for k, v in overrides.items()}
        for key, value in {**common, **overrides}.items():
            check_key(fields, key)
            parse_value(key, value, fields[key])
        out.append(Run(name, storage.join(workdir, name), overrides))
    return out, common


def load_runs(spec: str) -> dict[str, dict[str, Any]]:
    """The `get_runs()` of a runs file (`configs/sweeps/*.py`), or `get_runs(arg)` for `path:arg`:
    {run name: {dotted key: value}}."""
    path, _, arg = spec.partition(":")
    module = cli.load_module(path, "runs file")
    if not hasattr(module, "get_runs"):
        raise ValueError(f"runs file {path!r} has no get_runs()")
    return module.get_runs(arg) if arg else module.get_runs()


def _short_names(keys: list[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where two keys share a last component."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def train_command(config_spec: str, run: Run, common: dict[str, str], config: ml_collections.ConfigDict,
                  python: str = "python", train_py: str = "train.py") -> list[str]:
    """The `train.py` command line of one run, every value written as its field's type."""
    fields = config_fields(config)
    overrides = {**common, **run.overrides}
    flags = [f"--config.{k}={_flag_value(parse_value(k, v, fields[k]))}" for k, v in overrides.items()]
    return [python, train_py, f"--config={config_spec}", f"--workdir={run.workdir}", *flags]


def suite_command(suite_spec: str, run: Run, data: Sequence[str], sets: Sequence[str] = (),
                  python: str = "python") -> list[str]:
    """The downstream suite's command line for one run: fine-tuned from its workdir, into RUN/suite, with the
    suite's `--data` and `--set` flags."""
    return [python, "-m", "roberta_jax.tools.suite", "run", f"--config={suite_spec}",
            f"--workdir={storage.join(run.workdir, SUITE_DIR)}", f"--model={run.workdir}",
            *(f"--data={d}" for d in data), *(f"--set={s}" for s in sets)]


def _flag_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def write_sweep_file(workdir: str, config_spec: str, runs: list[Run], common: dict[str, str]) -> str:
    """Records the runs in WORKDIR/sweep.json, keeping runs of earlier invocations with other names."""
    path = storage.join(workdir, SWEEP_FILE)
    previous = read_sweep_file(workdir) if storage.isfile(path) else []
    names = {r.name for r in runs}
    entries = [r for r in previous if r["name"] not in names]
    entries += [{"name": r.name, "overrides": r.overrides, "set": common, "config": config_spec} for r in runs]
    storage.makedirs(workdir)
    storage.write_json(path, {"runs": entries}, indent=2)
    return path


def read_sweep_file(workdir: str) -> list[dict[str, Any]]:
    return json.loads(storage.read_text(storage.join(workdir, SWEEP_FILE)))["runs"]


def run_all(commands: list[tuple[Run, list[str]]]) -> int:
    """Runs the commands one after another, each logging into its workdir's train.log; returns
    the number of runs that failed (their log's tail goes to stderr). A run interrupted by a signal
    (`cli.EXIT_INTERRUPTED`) stops the sweep; it and the runs after it count as not done."""
    failed = 0
    for index, (run, cmd) in enumerate(commands, 1):
        storage.makedirs(run.workdir)
        log_path = storage.join(run.workdir, "train.log")
        print(f"[{index}/{len(commands)}] {run.name}: {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        code = run_logged(cmd, log_path)
        took = time.perf_counter() - start
        if code == cli.EXIT_INTERRUPTED:  # preempted: the run saved a checkpoint; so stops the sweep
            print(f"[{index}/{len(commands)}] {run.name}: interrupted after {took:.0f} s, checkpoint saved; "
                  "run the sweep again to resume", file=sys.stderr, flush=True)
            return failed + len(commands) - index + 1
        if code:
            failed += 1
            tail = storage.read_bytes(log_path).decode("utf-8", errors="replace")[-3000:]
            print(f"[{index}/{len(commands)}] {run.name}: FAILED (exit {code}) after {took:.0f} s; "
                  f"end of {log_path}:\n{tail}", file=sys.stderr, flush=True)
        else:
            print(f"[{index}/{len(commands)}] {run.name}: done in {took:.0f} s", flush=True)
    return failed


def run_logged(cmd: list[str], log_path: str) -> int:
    """Runs `cmd`, its output added to the end of `log_path` (a resumed run adds to its log): appended as it comes
    to a local file, to follow with `tail -f`; on object storage, which has no append, written whole, after what
    the log held, when the command ends. Returns the exit status."""
    local = storage.local_path(log_path)
    if local is not None:
        with open(local, "a", encoding="utf-8") as log:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    with tempfile.TemporaryFile() as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        out.seek(0)
        earlier = storage.read_bytes(log_path) if storage.exists(log_path) else b""
        storage.write_bytes(log_path, earlier + out.read())
    return code


# -- compare -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Summary:
    """One run's row of the comparison; NaN (and steps 0) where the run has no such values yet."""

    name: str
    overrides: dict[str, str]
    final_train_loss: float
    best: float
    final: float
    steps: int
    curve: tuple[Any, Any] | None  # (steps, values) of the metric
    downstream: dict[str, float] = dataclasses.field(default_factory=dict)  # "task metric" -> suite median


def summarize(workdir: str, metric: str = "eval/loss", mode: str = "min") -> list[Summary]:
    """The runs of a sweep (from sweep.json, else every subdirectory with logs), best first."""
    if storage.isfile(storage.join(workdir, SWEEP_FILE)):
        runs = [(r["name"], r["overrides"]) for r in read_sweep_file(workdir)]
    else:
        runs = [(d, {}) for d in storage.listdir(workdir) if events.has_logs(storage.join(workdir, d))]
    if not runs:
        raise FileNotFoundError(f"no {SWEEP_FILE} and no run directories with logs in {workdir}")
    nan = float("nan")
    rows = []
    for name, overrides in runs:
        run_dir = storage.join(workdir, name)
        downstream = suite_report.headline_medians(storage.join(run_dir, SUITE_DIR))
        if not events.has_logs(run_dir):
            rows.append(Summary(name, overrides, nan, nan, nan, 0, None, downstream))
            continue
        scalars = events.read_scalars(run_dir)
        train = scalars.get("train/loss")
        curve = scalars.get(metric)
        best = (min if mode == "min" else max)(curve[1]) if curve is not None else nan
        rows.append(Summary(
            name, overrides,
            final_train_loss=float(train[1][-1]) if train is not None else nan,
            best=float(best), final=float(curve[1][-1]) if curve is not None else nan,
            steps=max(int(s[-1]) for s, _ in scalars.values()) if scalars else 0,
            curve=curve, downstream=downstream,
        ))
    sign = 1.0 if mode == "min" else -1.0
    return sorted(rows, key=lambda r: (math.isnan(r.best), sign * r.best if not math.isnan(r.best) else 0.0))


def format_table(rows: list[Summary], metric: str) -> str:
    """A plain-text table, one line per run."""
    columns = list(dict.fromkeys(c for r in rows for c in r.downstream))  # downstream medians, in suite order
    header = ["run", "overrides", "final train/loss", f"best {metric}", f"final {metric}", "steps", *columns]
    lines = [header] + [
        [r.name, " ".join(f"{k}={v}" for k, v in r.overrides.items()) or "-",
         _number(r.final_train_loss), _number(r.best), _number(r.final), str(r.steps),
         *(f"{r.downstream[c]:.1f}" if c in r.downstream else "-" for c in columns)]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _number(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.4f}"


def save_plot(rows: list[Summary], metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    from roberta_jax.tools import plots

    fig = plots.run_curves({r.name: r.curve for r in rows if r.curve is not None}, metric)
    image = io.BytesIO()
    fig.savefig(image, format=os.path.splitext(path)[1][1:] or None, dpi=120)  # the format the name says
    plt.close(fig)
    storage.write_bytes(path, image.getvalue())


# -- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roberta_jax.tools.sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = cli.add_verbose(sub.add_parser("run", help="expand a grid into runs and train them (or print the commands)"))
    run.add_argument("--config", required=True, help="config file, as train.py's --config (path[:arg])")
    run.add_argument("--workdir", required=True, help="the sweep's directory; each run gets a subdirectory")
    run.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="a swept field")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a field fixed for every run")
    run.add_argument("--runs", metavar="FILE.py[:ARG]", help="named runs instead of a grid: FILE's get_runs([ARG])")
    run.add_argument("--print-only", action="store_true", help="print one launch command per run, run nothing")
    run.add_argument("--suite", metavar="SUITE.py", help="after each run, fine-tune it on this downstream suite")
    run.add_argument("--suite-data", action="append", default=[], metavar="TASK=DIR", help="the suite's --data")
    run.add_argument("--suite-set", action="append", default=[], metavar="KEY=VALUE", help="the suite's --set")
    compare = cli.add_verbose(sub.add_parser("compare", help="tabulate (and plot) the runs of a sweep"))
    compare.add_argument("--workdir", required=True)
    compare.add_argument("--metric", default="eval/loss")
    compare.add_argument("--mode", choices=("min", "max"), help="which is best; default max for accuracies, else min")
    compare.add_argument("--plot", help="write the metric against the step, one line per run, to this PNG")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser.prog, args.verbose):
        if args.command == "run":
            config = cli.load_config(args.config)
            if args.runs and args.grid:
                raise ValueError("--runs names every run; it does not combine with --grid")
            if args.runs:
                runs, common = named_runs(config, load_runs(args.runs), args.set, args.workdir)
            else:
                runs, common = expand(config, args.grid, args.set, args.workdir)
            write_sweep_file(args.workdir, args.config, runs, common)
            if args.print_only:
                for r in runs:
                    print(shlex.join(train_command(args.config, r, common, config)))
                    if args.suite:
                        print(shlex.join(suite_command(args.suite, r, args.suite_data, args.suite_set)))
                return 0
            train_py = os.path.join(REPO, "train.py")
            if not os.path.isfile(train_py):
                raise FileNotFoundError(f"{train_py} not found: run sweeps from a checkout of the repository, "
                                        "or launch the commands of --print-only yourself")
            commands = [(r, train_command(args.config, r, common, config, sys.executable, train_py)) for r in runs]
            if args.suite:
                commands = [c for r, cmd in commands for c in ((r, cmd), (r, suite_command(
                    args.suite, r, args.suite_data, args.suite_set, sys.executable)))]
            failed = run_all(commands)
            if failed:
                print(f"{failed} of {len(runs)} runs failed", file=sys.stderr)
            return 1 if failed else 0
        mode = args.mode or ("max" if "accuracy" in args.metric else "min")
        rows = summarize(args.workdir, args.metric, mode)
        print(format_table(rows, args.metric))
        if args.plot:
            save_plot(rows, args.metric, args.plot)
            print(f"plot: {args.plot}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
