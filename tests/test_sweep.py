"""Sweeps: grid expansion, typed overrides, launch commands, and a 2x2 sweep of tiny runs compared."""

import json
import os
import shlex
import sys

import pytest

from roberta_jax.tools import suite_report, sweep
from roberta_jax.train import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny.py")


@pytest.fixture(scope="module")
def config():
    return cli.load_config(CONFIG)


def test_grid_expands_to_the_cartesian_product_with_named_workdirs(config, tmp_path):
    runs, common = sweep.expand(config, ["optimizer.peak_lr=1e-4,3e-4,6e-4", "model.hidden_dropout_prob=0,0.1"],
                                ["total_steps=50"], str(tmp_path))
    assert [r.name for r in runs] == [f"peak_lr={lr},hidden_dropout_prob={p}"
                                      for lr in ("1e-4", "3e-4", "6e-4") for p in ("0", "0.1")]
    assert runs[3].workdir == str(tmp_path / "peak_lr=3e-4,hidden_dropout_prob=0.1")
    assert runs[3].overrides == {"optimizer.peak_lr": "3e-4", "model.hidden_dropout_prob": "0.1"}
    assert common == {"total_steps": "50"}


def test_keys_sharing_a_last_component_keep_their_full_names(config, tmp_path):
    runs, _ = sweep.expand(config, ["total_steps=10", "optimizer.total_steps=20"], [], str(tmp_path))
    assert runs[0].name == "total_steps=10,optimizer.total_steps=20"


def test_values_take_the_type_of_their_field(config, tmp_path):
    runs, common = sweep.expand(config, ["model.hidden_dropout_prob=0", "total_steps=1e3", "export_hf=false"],
                                ["data.train_files=a.txt,b.txt"], str(tmp_path))
    cmd = sweep.train_command("configs/tiny.py", runs[0], common, config)
    assert cmd[:4] == ["python", "train.py", "--config=configs/tiny.py", f"--workdir={runs[0].workdir}"]
    assert cmd[4:] == ["--config.data.train_files=a.txt,b.txt", "--config.model.hidden_dropout_prob=0.0",
                       "--config.total_steps=1000", "--config.export_hf=False"]


def test_the_ablations_runs_file_names_each_run_with_checked_typed_overrides(config, tmp_path):
    path = os.path.join(REPO, "configs", "sweeps", "roberta_ablations.py")
    runs, common = sweep.named_runs(config, sweep.load_runs(path), ["progress=False"], str(tmp_path))
    options, _ = sweep.named_runs(config, sweep.load_runs(f"{path}:options"), [], str(tmp_path))
    assert [r.name for r in runs] == ["dynamic", "static_x1", "doc_sentences", "segment_pair", "sentence_pair",
                                      "batch8", "batch128"]
    assert [r.name for r in options] == ["no_cross_document_attention", "whole_word", "span", "polynomial_power2"]
    rows = {int(r.overrides["batch_size"]) * int(r.overrides["total_steps"]) for r in runs + options}
    assert rows == {3200}  # every run sees the same rows
    cmd = sweep.train_command("configs/tiny.py", runs[5], common, config)
    assert cmd[4:7] == ["--config.progress=False", "--config.batch_size=8", "--config.total_steps=400"]
    assert "--config.optimizer.peak_lr=0.00014" in cmd and "--config.eval_every_steps=400" in cmd
    with pytest.raises(ValueError, match="did you mean 'masking.static_copies'"):
        sweep.named_runs(config, {"static": {"masking.static_copiess": 3}}, [], str(tmp_path))


@pytest.mark.parametrize("grid, sets, message", [
    (["optimiser.peak_lr=1e-4"], [], "unknown config key 'optimiser.peak_lr'; did you mean 'optimizer.peak_lr'?"),
    (["peak_lr=1e-4"], [], "did you mean 'optimizer.peak_lr'?"),
    ([], ["model.hiden_size=64"], "did you mean 'model.hidden_size'?"),
    (["total_steps=1.5"], [], "total_steps='1.5': expected an integer, like the default 300"),
    (["optimizer.peak_lr=fast"], [], "expected a number"),
    (["export_hf=maybe"], [], "expected true or false"),
    (["total_steps=1", "total_steps=2"], [], "given twice"),
    (["total_steps=1,2"], ["total_steps=3"], "both swept (--grid) and fixed (--set)"),
    (["total_steps"], [], "expected KEY=VALUE"),
])
def test_bad_overrides_are_errors_that_say_what_to_do(config, tmp_path, grid, sets, message):
    with pytest.raises(ValueError) as err:
        sweep.expand(config, grid, sets, str(tmp_path))
    assert message in str(err.value)


def test_print_only_prints_one_launch_command_per_run_and_records_the_sweep(tmp_path, capsys):
    code = sweep.main(["run", "--config", CONFIG, "--workdir", str(tmp_path), "--print-only",
                       "--grid", "optimizer.peak_lr=1e-4,3e-4", "--grid", "seed=0,1", "--set", "total_steps=50"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert shlex.split(lines[3]) == [
        "python", "train.py", f"--config={CONFIG}", f"--workdir={tmp_path}/peak_lr=3e-4,seed=1",
        "--config.total_steps=50", "--config.optimizer.peak_lr=0.0003", "--config.seed=1"]
    recorded = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert [r["name"] for r in recorded] == ["peak_lr=1e-4,seed=0", "peak_lr=1e-4,seed=1", "peak_lr=3e-4,seed=0",
                                             "peak_lr=3e-4,seed=1"]
    assert not any(os.path.isdir(tmp_path / r["name"]) for r in recorded)


def test_an_unknown_key_on_the_command_line_exits_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["run", "--config", CONFIG, "--workdir", str(tmp_path), "--grid", "optimiser.peak_lr=1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("python -m roberta_jax.tools.sweep: error: unknown config key "
                                               "'optimiser.peak_lr'; did you mean 'optimizer.peak_lr'?")


TINY = [
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
    "model.max_position_embeddings=34", "tokenizer.vocab_size=300", "data.max_seq_length=32", "batch_size=8",
    "total_steps=4", "log_every_steps=1", "eval_every_steps=2", "eval_batches=1", "checkpoint.every_steps=1000",
    "progress=false", "export_hf=false",
]


def test_a_two_by_two_sweep_runs_and_compares(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    with open(os.path.join(REPO, "data", "demo_corpus.txt"), encoding="utf-8") as f:
        corpus.write_text(f.read(40_000), encoding="utf-8")
    # The runs inherit this environment; the cache lets them share the programs that do not change.
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    workdir = tmp_path / "sweep"
    sets = [a for kv in [f"data.train_files={corpus}", *TINY] for a in ("--set", kv)]
    code = sweep.main(["run", "--config", CONFIG, "--workdir", str(workdir), "--grid", "optimizer.peak_lr=1e-3,3e-3",
                       "--grid", "model.hidden_dropout_prob=0,0.1", *sets])
    assert code == 0, capsys.readouterr()
    names = sorted(d for d in os.listdir(workdir) if os.path.isdir(workdir / d))
    assert names == ["peak_lr=1e-3,hidden_dropout_prob=0", "peak_lr=1e-3,hidden_dropout_prob=0.1",
                     "peak_lr=3e-3,hidden_dropout_prob=0", "peak_lr=3e-3,hidden_dropout_prob=0.1"]
    resolved = json.loads((workdir / names[3] / "train_config.json").read_text())
    assert resolved["optimizer"]["peak_lr"] == 3e-3 and resolved["model"]["hidden_dropout_prob"] == 0.1
    assert resolved["total_steps"] == 4 and resolved["model"]["hidden_size"] == 32
    capsys.readouterr()

    plot = tmp_path / "eval_loss.png"
    assert sweep.main(["compare", "--workdir", str(workdir), "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "overrides", "final", "train/loss", "best", "eval/loss", "final", "eval/loss",
                                "steps"]
    rows = [line.split() for line in lines[1:5]]
    assert sorted(r[0] for r in rows) == names
    best = [float(r[4]) for r in rows]
    assert best == sorted(best)  # best run first
    for row in rows:
        name, overrides, train_loss, best_eval, final_eval, steps = row[0], row[1:3], *map(float, row[3:6]), row[6]
        assert overrides == [f"optimizer.{name.split(',')[0]}", f"model.{name.split(',')[1]}"]
        assert 4.0 < train_loss < 7.0 and best_eval <= final_eval and steps == "4"
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_an_interrupted_run_stops_the_sweep(tmp_path, capsys):
    runs = [sweep.Run(name, str(tmp_path / name), {}) for name in ("a", "b", "c")]
    exits = [0, cli.EXIT_INTERRUPTED, 0]
    commands = [(run, [sys.executable, "-c", f"import sys; sys.exit({code})"]) for run, code in zip(runs, exits)]
    assert sweep.run_all(commands) == 2  # b (interrupted) and c (never started) are not done
    err = capsys.readouterr().err
    assert "b: interrupted after" in err and "run the sweep again to resume" in err
    assert not os.path.exists(tmp_path / "c")


def test_suite_step_commands_and_downstream_columns_in_compare(tmp_path, capsys):
    suite_config = os.path.join(REPO, "configs", "suites", "tiny_cpu.py")
    code = sweep.main(["run", "--config", CONFIG, "--workdir", str(tmp_path), "--print-only", "--grid", "seed=0,1",
                       "--suite", suite_config, "--suite-data", "sst2=/data/sst2", "--suite-set", "total_steps=9"])
    assert code == 0
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [line[1] for line in lines] == ["train.py", "-m", "train.py", "-m"]
    assert lines[3] == ["python", "-m", "roberta_jax.tools.suite", "run", f"--config={suite_config}",
                        f"--workdir={tmp_path}/seed=1/suite", f"--model={tmp_path}/seed=1", "--data=sst2=/data/sst2",
                        "--set=total_steps=9"]
    # Run seed=0 has a finished suite (SST-2 medians of 3 seeds: 0.8; CoNLL: 0.5); seed=1 none yet.
    suite_dir = tmp_path / "seed=0" / "suite"
    (suite_dir).mkdir(parents=True)
    (suite_dir / "suite.json").write_text(json.dumps({"model": "m", "results": "final"}))
    for task, metric, values in (("sst2", "accuracy", (0.7, 0.8, 0.9)), ("conll", "f1", (0.5, 0.1, 0.6))):
        for seed, value in enumerate(values, start=1):
            run_dir = suite_dir / "runs" / task / "default" / f"seed{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "eval_results.json").write_text(json.dumps({"final": {f"eval/{metric}": value}}))
    suite_report.write_report(str(suite_dir))
    assert sweep.main(["compare", "--workdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-5:] == ["steps", "conll", "f1", "sst2", "accuracy"]
    assert {line.split()[0]: line.split()[-2:] for line in lines[1:]} == {"seed=0": ["50.0", "80.0"],
                                                                          "seed=1": ["-", "-"]}
