"""train.py on a mixture of three sources (configs/mixture.py on generated files): two jax.distributed processes,
SIGKILLed and rerun, give one process's losses and per-source eval metrics; tools.prepare writes one prepared
directory per source and the mixture's manifest, and train.py reads them."""

import json
import os
import signal
import subprocess
import sys

import pytest

from roberta_jax.data import shards
from roberta_jax.train import metrics
from tests.train_runs import REPO, free_port, losses, run_train, wait_for_step

NAMES = ("shakespeare", "stories", "wiki")
STEPS = ["--config.total_steps=20", "--config.checkpoint.every_steps=5", "--config.eval_every_steps=10",
         "--config.eval_batches=1"]


@pytest.fixture(scope="module")
def sources(corpus, tmp_path_factory):
    """The three sources of configs/mixture.py cut from the test corpus (sizes 16, 4 and 10 KB: the stories
    roll over into new epochs early), each with 2 KB of held-out text."""
    directory = tmp_path_factory.mktemp("sources")
    text, start = open(corpus, encoding="utf-8").read(), 0
    for name, size in zip(NAMES, (16_000, 4_000, 10_000)):
        (directory / f"{name}.txt").write_text(text[start:start + size], encoding="utf-8")
        (directory / f"{name}.eval.txt").write_text(text[start + size:start + size + 2_000], encoding="utf-8")
        start += size + 2_000
    return str(directory)


def mixture_run(workdir, sources, *more, **kwargs):
    cache = f"--config.compilation_cache_dir={os.path.dirname(workdir)}/cache"  # a rerun does not compile again
    return run_train(workdir, "", *STEPS, cache, *more, config=f"configs/mixture.py:{sources}", **kwargs)


def eval_metrics(workdir):
    return {step: {k: v for k, v in m.items() if k.startswith("eval/")}
            for step, m in metrics.read_metrics(str(workdir)).items() if "eval/loss" in m}


def test_two_processes_killed_and_rerun_match_one_process(sources, tmp_path):
    straight = tmp_path / "straight"
    mixture_run(straight, sources, devices=2)
    evals = eval_metrics(straight)
    assert sorted(evals) == [10, 20]
    assert {k.split("/")[1] for k in evals[20]} == {"loss", "perplexity", "accuracy", *NAMES}
    assert {f"eval/{name}/loss" for name in NAMES} <= set(evals[20])

    workdir = tmp_path / "multi"

    def launch():
        distributed = ["--config.distributed.initialize=True", "--config.distributed.num_processes=2",
                       f"--config.distributed.coordinator_address=127.0.0.1:{free_port()}"]
        return [mixture_run(workdir, sources, *distributed, f"--config.distributed.process_id={i}", background=True)
                for i in range(2)]

    procs = launch()
    wait_for_step(workdir, procs[0], 7)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert max(losses(workdir)) < 20
    procs = launch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "resumed from step " in outputs[0]
    want, got = losses(straight), losses(workdir)
    assert sorted(got) == sorted(want) == list(range(1, 21))
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-5
    for step, values in evals.items():
        assert eval_metrics(workdir)[step] == pytest.approx(values, abs=1e-5)


def prepare(sources, out, *more):
    cmd = [sys.executable, "-m", "roberta_jax.tools.prepare", f"--config={REPO}/configs/mixture.py:{sources}",
           f"--out={out}", "--config.tokenizer.vocab_size=300", "--config.data.max_seq_length=32",
           "--config.progress=False", "--num_workers=1", *more]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True)


def test_prepare_writes_each_source_and_the_mixture_manifest_and_training_reads_them(sources, tmp_path):
    out = tmp_path / "prepared"
    done = prepare(sources, out)
    assert done.returncode == 0, done.stderr[-3000:]
    mixture = json.loads((out / shards.MIXTURE_MANIFEST).read_text())
    assert sorted(mixture["sources"]) == list(NAMES)
    for name in NAMES:
        manifest = shards.read_manifest(out / name)  # each source a prepared directory of its own
        assert manifest["tokenizer"] == mixture["tokenizer"] and (out / name / shards.TOKENIZER).is_dir()
        for split in ("train", "eval"):
            recorded = mixture["sources"][name]["splits"][split]
            assert recorded == {k: manifest["splits"][split][k] for k in ("documents", "rows", "tokens")}
            assert recorded["rows"] > 0
    assert json.loads(done.stdout.splitlines()[-1]) == {n: e["splits"] for n, e in mixture["sources"].items()}
    assert mixture["sources"]["shakespeare"]["weight"] == 0.5

    workdir = tmp_path / "run"
    mixture_run(workdir, sources, f"--config.data.prepared={out}", "--config.total_steps=10")
    assert sorted(losses(workdir)) == list(range(1, 11))
    assert {f"eval/{name}/loss" for name in NAMES} <= set(eval_metrics(workdir)[10])


    (tmp_path / "src").mkdir()  # an empty file: the error names its source
    for name in NAMES:
        (tmp_path / "src" / f"{name}.txt").write_text("" if name == "stories" else "Some text.\n")
    done = prepare(tmp_path / "src", tmp_path / "out", "--config.data.eval_fraction=0",
                   f"--config.tokenizer.path={out}/tokenizer")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith(f"data.sources.stories: {tmp_path}/src/stories.txt: "
                                                         "file is empty.")
