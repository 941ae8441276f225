"""The tables of a downstream suite (`tools.suite`): medians over seeds, the best grid point, published numbers.

    records = collect("runs/glue")               # one per finished run: task, grid point, seed, scores
    tasks = summarize(records)                   # per task: each point's medians, the selected point
    write_report("runs/glue")                    # results.md, results.csv, results.json; returns the markdown

Scores are in percent, as the published ones (`benchmarks.Benchmark.scale`). A task's grid point is the one
with the highest median of its first headline metric (ties: the first point by name); the other headline
metrics are reported at that point. A median of an even number of seeds is the mean of the middle two.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics

from roberta_jax import storage
from roberta_jax.finetune import benchmarks
from roberta_jax.train import workdir as workdir_files

SUITE_FILE = "suite.json"
_SEED = re.compile(r"^seed(-?\d+)$")


def collect(workdir: str) -> tuple[dict, list[dict]]:
    """(suite.json, the finished runs under WORKDIR/runs/<task>/<point>/seed<k>): each record {task, point, seed,
    scores: {metric: percent}}, the run's `best` or `final` evaluation as suite.json's `results` says."""
    suite = storage.read_json(storage.join(workdir, SUITE_FILE))
    if suite is None:
        raise FileNotFoundError(f"{workdir} has no {SUITE_FILE}: not a suite's workdir (python -m "
                                "roberta_jax.tools.suite run ... writes it)")
    records, root = [], storage.join(workdir, "runs")
    for task in _names(root) if storage.isdir(root) else []:
        scale = benchmarks.get_benchmark(task).scale
        for point in _names(storage.join(root, task)):
            for seed_dir in _names(storage.join(root, task, point)):
                match = _SEED.match(seed_dir)
                results = storage.read_json(storage.join(root, task, point, seed_dir, workdir_files.RESULTS))
                if match is None or results is None:
                    continue
                evaluation = results[suite.get("results", "best")]
                scores = {k.removeprefix("eval/"): scale * v for k, v in evaluation.items()
                          if not k.startswith("eval/best_") and not k.endswith("loss")}
                records.append({"task": task, "point": point, "seed": int(match.group(1)), "scores": scores})
    return suite, records


def _names(directory: str) -> list[str]:
    """The entries of `directory`, sorted, without the "/" a bucket listing ends folders with."""
    return sorted(name.rstrip("/") for name in storage.listdir(directory))


def summarize(records: list[dict]) -> dict[str, dict]:
    """{task: {"headline", "selected" (grid point), "points": {point: {"seeds", "median": {metric: value},
    "values": {metric: [by seed]}}}}}, the points by name, seeds in order."""
    tasks: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["task"], r["point"], r["seed"])):
        point = tasks.setdefault(r["task"], {"points": {}})["points"].setdefault(
            r["point"], {"seeds": [], "values": {}})
        point["seeds"].append(r["seed"])
        for metric, value in r["scores"].items():
            point["values"].setdefault(metric, []).append(value)
    for task, summary in tasks.items():
        summary["headline"] = list(benchmarks.get_benchmark(task).headline)
        for point in summary["points"].values():
            point["median"] = {m: statistics.median(v) for m, v in point["values"].items()}
        summary["selected"] = select_point(summary["points"], summary["headline"][0])
    return tasks


def select_point(points: dict[str, dict], metric: str) -> str:
    """The grid point with the highest median of `metric` (NaN never wins; ties: the first by name)."""
    def key(name):
        value = points[name]["median"].get(metric, float("nan"))
        return -math.inf if math.isnan(value) else value

    return max(sorted(points), key=key)


def _cell(value) -> str:
    return "" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def table_rows(tasks: dict[str, dict]) -> list[dict]:
    """One row per task and headline metric, at the selected grid point, with the published numbers."""
    rows = []
    for task, summary in tasks.items():
        bench, point = benchmarks.get_benchmark(task), summary["points"][summary["selected"]]
        for metric in summary["headline"]:
            rows.append({"task": task, "metric": metric, "median": point["median"].get(metric),
                         "seeds": len(point["seeds"]), "grid_point": summary["selected"],
                         **{m: bench.published.get(m, {}).get(metric) for m in benchmarks.PUBLISHED_MODELS}})
    return rows


def markdown(suite: dict, tasks: dict[str, dict]) -> str:
    rows = table_rows(tasks)
    header = ["task", "metric", "median", "seeds", "grid point", *(f"{m} (published)" for m in
                                                                  benchmarks.PUBLISHED_MODELS)]
    lines = [f"Model: `{suite['model']}`; dev scores (%), median over seeds of each run's {suite.get('results')} "
             "evaluation, at the grid point with the best median.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["task"], r["metric"], _cell(r["median"]), str(r["seeds"]), f"`{r['grid_point']}`",
                 *(_cell(r[m]) for m in benchmarks.PUBLISHED_MODELS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Every grid point (median of the selecting metric):", "", "| task | grid point | metric | median "
              "| seeds |", "|---|---|---|---|---|"]
    for task, summary in tasks.items():
        metric = summary["headline"][0]
        for name, point in summary["points"].items():
            lines.append(f"| {task} | `{name}` | {metric} | {_cell(point['median'].get(metric))} | "
                         f"{','.join(map(str, point['seeds']))} |")
    return "\n".join(lines) + "\n"


def csv_text(tasks: dict[str, dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", "grid_point", "selected", "metric", "median", "seeds", "values",
                     *benchmarks.PUBLISHED_MODELS])
    for task, summary in tasks.items():
        bench = benchmarks.get_benchmark(task)
        for name, point in summary["points"].items():
            for metric in summary["headline"]:
                values = point["values"].get(metric, [])
                writer.writerow([task, name, int(name == summary["selected"]), metric,
                                 _cell(point["median"].get(metric)) and f"{point['median'][metric]:.4f}",
                                 len(point["seeds"]), " ".join(f"{v:.4f}" for v in values),
                                 *(_cell(bench.published.get(m, {}).get(metric)) for m in
                                   benchmarks.PUBLISHED_MODELS)])
    return out.getvalue()


def headline_medians(workdir: str) -> dict[str, float]:
    """{"task metric": median at the selected grid point} of a suite's results.json ({} where there is none):
    the first headline metric of each task, the columns a sweep's comparison adds."""
    results = storage.read_json(storage.join(workdir, "results.json"))
    if results is None:
        return {}
    out = {}
    for row in results["table"]:
        if row["metric"] == results["tasks"][row["task"]]["headline"][0] and row["median"] is not None:
            out[f"{row['task']} {row['metric']}"] = row["median"]
    return out


def write_report(workdir: str) -> str:
    """Writes WORKDIR/results.md, results.csv and results.json of the finished runs; returns the markdown."""
    suite, records = collect(workdir)
    tasks = summarize(records)
    text = markdown(suite, tasks)
    storage.write_text(storage.join(workdir, "results.md"), text)
    storage.write_text(storage.join(workdir, "results.csv"), csv_text(tasks))
    storage.write_json(storage.join(workdir, "results.json"), {"model": suite["model"], "results":
                       suite.get("results"), "tasks": tasks, "table": table_rows(tasks)}, indent=2)
    return text
