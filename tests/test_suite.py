"""The downstream suite: benchmarks' configs, the plan and its shards, medians and the selected grid point, a
suite resumed without rerunning finished runs, suite.json refusing another model or plan, and a real run of two
tasks x two seeds from a tiny random model on the task fixtures."""

import csv
import json
import os
import shutil

import jax
import ml_collections
import pytest
from jax.experimental.compilation_cache import compilation_cache

from roberta_jax.finetune import benchmarks
from roberta_jax.model.config import RobertaConfig
from roberta_jax.tools import suite, suite_report
from roberta_jax.train import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_DATA = os.path.join(REPO, "tests", "data", "tasks")
GLUE = os.path.join(REPO, "configs", "suites", "glue.py")
TINY_CPU = os.path.join(REPO, "configs", "suites", "tiny_cpu.py")


def test_benchmark_configs_name_glue_files_and_columns():
    mnli = benchmarks.finetune_config(benchmarks.get_benchmark("mnli"), "/glue/MNLI")
    assert (mnli.data.train_file, mnli.data.eval_file) == ("/glue/MNLI/train.tsv", "/glue/MNLI/dev_matched.tsv")
    assert mnli.data.extra_eval_files == "mm=/glue/MNLI/dev_mismatched.tsv"
    assert mnli.data.label_column == "gold_label" and mnli.best_metric == "accuracy"
    cola = benchmarks.finetune_config(benchmarks.get_benchmark("cola"), "/glue/CoLA")
    assert cola.data.columns == "source,label,original_label,sentence" and cola.best_metric == "matthews_correlation"
    stsb = benchmarks.finetune_config(benchmarks.get_benchmark("stsb"), "/glue/STS-B")
    assert stsb.data.regression and stsb.data.label_column == "score" and stsb.best_metric == "pearson"
    squad2 = benchmarks.finetune_config(benchmarks.get_benchmark("squad2"), "/squad")
    assert squad2.data.version_2_with_negative and squad2.data.eval_file == "/squad/dev-v2.0.json"
    hf = benchmarks.finetune_config(benchmarks.get_benchmark("mrpc"), "/d", hf_files=True)
    assert (hf.data.train_file, hf.data.text_a, hf.data.label_column) == ("/d/train.jsonl", "", "label")
    assert benchmarks.get_benchmark("rte").published == {"roberta.base": {"accuracy": 78.7},
                                                         "roberta.large": {"accuracy": 86.6}}
    with pytest.raises(ValueError, match="unknown benchmark 'sst-2'; did you mean 'sst2'"):
        benchmarks.get_benchmark("sst-2")


def test_hf_splits_written_whole_as_json_lines(tmp_path):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(*name):
        calls.append(name)
        rows = {"sentence": ["a warm film", "dull"], "label": [1, 0], "idx": [0, 1]}
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in ("train", "validation")})

    bench = benchmarks.get_benchmark("sst2")
    out = benchmarks.hf_splits(bench, str(tmp_path), load_dataset)
    assert calls == [("glue", "sst2")] and sorted(os.listdir(out)) == ["train.jsonl", "validation.jsonl"]
    assert [json.loads(line)["sentence"] for line in (tmp_path / "train.jsonl").read_text().splitlines()] == [
        "a warm film", "dull"]
    benchmarks.hf_splits(bench, str(tmp_path), load_dataset)
    assert len(calls) == 1  # complete: not loaded again


def test_plan_and_shards_partition_the_runs(tmp_path):
    plan = suite.make_plan(cli.load_config(GLUE), str(tmp_path), "model", tasks="mnli,rte", seeds="1,2,3")
    assert len(plan.runs) == 2 * 6 * 3
    first = plan.runs[0]
    assert (first.task, first.point, first.seed) == ("mnli", "peak_lr=1e-5,batch_size=16", 1)
    assert first.workdir == str(tmp_path / "runs" / "mnli" / "peak_lr=1e-5,batch_size=16" / "seed1")
    assert first.overrides == {"optimizer.peak_lr": "1e-5", "batch_size": "16"}
    for n in (1, 4, 7, 100):
        shards = [suite.shard(plan.runs, f"{i}/{n}") for i in range(n)]
        together = [r.workdir for s in shards for r in s]
        assert sorted(together) == sorted(r.workdir for r in plan.runs) and len(set(together)) == len(plan.runs)
    with pytest.raises(ValueError, match=r"--shard '4/4': expected I/N with 0 <= I < N"):
        suite.shard(plan.runs, "4/4")
    narrowed = suite.make_plan(cli.load_config(GLUE), str(tmp_path), "m", "rte", "1", ["optimizer.peak_lr=5e-5"])
    assert [r.point for r in narrowed.runs] == ["peak_lr=5e-5,batch_size=16", "peak_lr=5e-5,batch_size=32"]
    with pytest.raises(ValueError, match="unknown config key 'optimizer.peak_learning_rate'.*optimizer.peak_lr"):
        suite.make_plan(cli.load_config(GLUE), str(tmp_path), "m", "rte", "1", ["optimizer.peak_learning_rate=1"])
    tiny = suite.make_plan(cli.load_config(TINY_CPU), str(tmp_path), "m", sets=["data.max_train_examples=10"])
    assert suite.run_config(tiny, tiny.runs[0]).data.max_train_examples == 10  # over the config's task_set
    with pytest.raises(ValueError, match="seeds '1,x': expected comma-separated integers"):
        suite.make_plan(cli.load_config(GLUE), str(tmp_path), "m", seeds="1,x")
    config = suite.run_config(narrowed, narrowed.runs[1])
    assert (config.batch_size, config.optimizer.peak_lr, config.seed, config.num_epochs) == (32, 5e-5, 1, 10.0)
    assert config.init_from == os.path.abspath("m") and not config.init_random


def _write_run(workdir, task, point, seed, **scores):
    run_dir = workdir / "runs" / task / point / f"seed{seed}"
    run_dir.mkdir(parents=True)
    best = {f"eval/{k}": v for k, v in scores.items()} | {"eval/loss": 0.5, "eval/best_accuracy": 1.0}
    (run_dir / "eval_results.json").write_text(json.dumps({"best": best, "final": best}))


def test_medians_select_the_best_grid_point(tmp_path):
    (tmp_path / "suite.json").write_text(json.dumps({"model": "m", "results": "best"}))
    # lr=1: seeds 0.90, 0.80, 0.70 -> median 0.80; lr=2: 0.95, 0.60, 0.79 -> 0.79 despite the best single run.
    for seed, (a, b) in enumerate([(0.90, 0.95), (0.80, 0.60), (0.70, 0.79)], start=1):
        _write_run(tmp_path, "rte", "lr=1", seed, accuracy=a)
        _write_run(tmp_path, "rte", "lr=2", seed, accuracy=b)
    for seed, (acc, mm) in enumerate([(0.5, 0.4), (0.7, 0.9)], start=1):  # an even count: mean of the middle two
        _write_run(tmp_path, "mnli", "only", seed, accuracy=acc, **{"mm/accuracy": mm})
    (tmp_path / "runs" / "rte" / "lr=2" / "seed9").mkdir()  # unfinished: not counted
    text = suite_report.write_report(str(tmp_path))
    tasks = json.loads((tmp_path / "results.json").read_text())["tasks"]
    assert tasks["rte"]["selected"] == "lr=1"
    assert tasks["rte"]["points"]["lr=2"]["median"]["accuracy"] == pytest.approx(79.0)
    assert tasks["rte"]["points"]["lr=2"]["seeds"] == [1, 2, 3]
    assert tasks["mnli"]["points"]["only"]["median"] == pytest.approx({"accuracy": 60.0, "mm/accuracy": 65.0})
    assert "| rte | accuracy | 80.0 | 3 | `lr=1` | 78.7 | 86.6 |" in text
    assert "| mnli | mm/accuracy | 65.0 | 2 | `only` |  | 90.2 |" in text
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["task"], r["grid_point"], r["selected"], r["median"]) for r in rows if r["task"] == "rte"] == [
        ("rte", "lr=1", "1", "80.0000"), ("rte", "lr=2", "0", "79.0000")]
    assert suite_report.select_point({"a": {"median": {"x": float("nan")}}, "b": {"median": {"x": 1.0}}}, "x") == "b"


def _fake_finetune(calls, fail_at=None):
    def finetune(config, workdir):
        calls.append(workdir)
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # the suite killed mid-run
        os.makedirs(workdir, exist_ok=True)
        results = {"best_metric": "eval/accuracy", "best": {"eval/accuracy": config.seed / 10}, "final": {}}
        with open(os.path.join(workdir, "eval_results.json"), "w") as f:
            json.dump(results, f)
        return results
    return finetune


def test_interrupted_suite_resumes_without_rerunning_finished_runs(tmp_path):
    plan = suite.make_plan(cli.load_config(GLUE), str(tmp_path), "m", tasks="rte", seeds="1,2",
                           grid=["optimizer.peak_lr=1e-5", "batch_size=16"])
    suite.check_suite_file(str(tmp_path), plan)
    calls = []
    with pytest.raises(KeyboardInterrupt):
        suite.run_suite(plan, plan.runs, _fake_finetune(calls, fail_at=2))
    finished = os.path.join(plan.runs[0].workdir, "eval_results.json")
    mtime = os.stat(finished).st_mtime_ns
    again = []
    assert suite.run_suite(plan, plan.runs, _fake_finetune(again)) == (1, 0)
    assert again == [plan.runs[1].workdir] and os.stat(finished).st_mtime_ns == mtime
    assert suite.run_suite(plan, plan.runs, _fake_finetune(again)) == (0, 0) and len(again) == 1


def test_suite_file_refuses_another_model_or_plan(tmp_path):
    config = cli.load_config(GLUE)
    suite.check_suite_file(str(tmp_path), suite.make_plan(config, str(tmp_path), "m", "rte", "1,2"))
    suite.check_suite_file(str(tmp_path), suite.make_plan(config, str(tmp_path), "m", "rte", "1,2"))  # same: fine
    with pytest.raises(ValueError, match=r"suite.json: this suite was run with model='/.*/m', not '/.*/other'"):
        suite.check_suite_file(str(tmp_path), suite.make_plan(config, str(tmp_path), "other", "rte", "1,2"))
    with pytest.raises(ValueError, match=r"run with seeds=\[1, 2\], not \[1, 2, 3\]"):
        suite.check_suite_file(str(tmp_path), suite.make_plan(config, str(tmp_path), "m", "rte", "1,2,3"))
    with pytest.raises(ValueError, match=r"run with grid=.*; use another --workdir"):
        suite.check_suite_file(str(tmp_path), suite.make_plan(config, str(tmp_path), "m", "rte", "1,2",
                                                              ["batch_size=8"]))


@pytest.fixture()
def compile_cache(tmp_path_factory):
    """A persistent compilation cache: the suite's runs of one task compile the same steps."""
    previous = jax.config.jax_compilation_cache_dir
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("compilation_cache")))
    yield
    jax.config.update("jax_compilation_cache_dir", previous)
    compilation_cache.reset_cache()


def test_suite_end_to_end_on_the_task_fixtures(tmp_path, capsys, compile_cache):
    model = tmp_path / "tiny"  # an architecture and a tokenizer, no weights: random:PATH needs no more
    model.mkdir()
    RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=66).to_json_file(str(model / "config.json"))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(REPO, "tests", "data", "roberta-base", name), model / name)
    data = tmp_path / "data"
    for task, source, files in (("sst2", "sst2.tsv", ("train.tsv", "dev.tsv")),
                                ("conll", "conll.txt", ("train.txt", "valid.txt"))):
        (data / task).mkdir(parents=True)
        for name in files:
            shutil.copy(os.path.join(TASK_DATA, source), data / task / name)
    workdir = tmp_path / "suite"
    argv = ["run", "--config", TINY_CPU, "--workdir", str(workdir), "--model", f"random:{model}", "--seeds", "1,2",
            "--data", f"sst2={data / 'sst2'}", "--data", f"conll={data / 'conll'}",
            "--set", "total_steps=2", "--set", "batch_size=2", "--set", "eval_every_steps=2",
            "--set", "checkpoint.every_steps=2", "--set", "data.max_length=32", "--set", "dtype=float32"]
    assert suite.main(argv) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert {r["task"]: r["seeds"] for r in results["table"]} == {"sst2": 2, "conll": 2}
    sst2 = results["tasks"]["sst2"]["points"]["default"]
    # Two seeds, two random inits: each accuracy is a multiple of 1/6 (six fixture sentences), the median their mean.
    assert all(round(v * 6 / 100, 6).is_integer() for v in sst2["values"]["accuracy"])
    assert sst2["median"]["accuracy"] == pytest.approx(sum(sst2["values"]["accuracy"]) / 2)
    run = json.loads((workdir / "runs" / "sst2" / "default" / "seed2" / "finetune_config.json").read_text())
    assert run["init_random"] is True and run["seed"] == 2 and run["data"]["max_train_examples"] == 4000
    mtimes = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/*/*/eval_results.json")}
    capsys.readouterr()
    assert suite.main(argv) == 0  # everything done: nothing fine-tuned again
    assert "0 runs fine-tuned, 0 failed, 4 already done" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    with pytest.raises(SystemExit) as exit_:
        suite.main([*argv[:6], "random:elsewhere", *argv[7:]])
    assert exit_.value.code == cli.EXIT_BAD_INPUT
    assert "this suite was run with model=" in capsys.readouterr().err


def test_configs_load(tmp_path):
    for path in (GLUE, TINY_CPU):
        config = cli.load_config(path)
        assert isinstance(config, ml_collections.ConfigDict)
        suite.make_plan(config, str(tmp_path), "m")
