"""finetune.py end to end on CPU for the four tasks, from an HF directory and from a pretraining workdir;
the task losses against `transformers`; the batch iterator; the config files and the command line."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from roberta_jax.data.tokenizer import RobertaTokenizer
from roberta_jax.finetune import run, tasks, weights
from roberta_jax.finetune.data import FeatureBatches, load_task_data
from roberta_jax.model import hf_io
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import ARCHITECTURES, init_params
from roberta_jax.tools import sweep
from roberta_jax.train import checkpoint, cli, optimizer, sharding, steps
from roberta_jax.train import workdir as workdir_files
from roberta_jax.train.config import default_config
from tests.train_runs import losses

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_DATA = os.path.join(REPO, "tests", "data", "tasks")
ROBERTA_BASE_TOKENIZER = os.path.join(REPO, "tests", "data", "roberta-base")
TINY = dict(vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=66, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
# Each task on its fixture (the same file for training and evaluation), a few steps of a tiny model.
TASKS = {
    "sst2": dict(task="classification", file="sst2.tsv", auto="AutoModelForSequenceClassification"),
    "conll": dict(task="ner", file="conll.txt", auto="AutoModelForTokenClassification"),
    "squad": dict(task="qa", file="squad.json", auto="AutoModelForQuestionAnswering"),
    "swag": dict(task="multiple_choice", file="swag.csv", auto="AutoModelForMultipleChoice"),
}


def load_config(name):
    return cli.load_config(os.path.join(REPO, "configs", "finetune", f"{name}.py"))


def tiny_config(name, init_from, **overrides):
    c = load_config(name)
    path = os.path.join(TASK_DATA, TASKS[name]["file"])
    c.init_from = init_from
    c.data.update(train_file=path, eval_file=path, max_length=64, doc_stride=16)
    c.update(dtype="float32", batch_size=2, eval_batch_size=4, total_steps=4, eval_every_steps=2, progress=False,
             log_every_steps=1)
    c.optimizer.peak_lr = 1e-3
    c.checkpoint.update(every_steps=2, asynchronous=False)
    c.update(overrides)
    return c


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """A persistent compilation cache for this module: every `finetune_and_evaluate` compiles its steps anew,
    and the runs of one config (the resume test's four, the command line's) need to compile them once."""
    path = str(tmp_path_factory.mktemp("compilation_cache"))
    previous = jax.config.jax_compilation_cache_dir
    compilation_cache.reset_cache()  # the cache is set up at a process's first compilation; again with the dir
    jax.config.update("jax_compilation_cache_dir", path)
    yield path
    jax.config.update("jax_compilation_cache_dir", previous)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny `transformers` RoBERTa saved with `save_pretrained`, with roberta-base's tokenizer files."""
    path = tmp_path_factory.mktemp("tiny_hf")
    torch.manual_seed(0)
    transformers.RobertaForMaskedLM(transformers.RobertaConfig(**TINY)).save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(ROBERTA_BASE_TOKENIZER, name), path / name)
    return str(path)


@pytest.fixture(scope="module")
def pretraining_workdir(tmp_path_factory, hf_dir):
    """A pretraining workdir as train.py leaves it: an Orbax checkpoint of an MLM train state at step 3,
    `model_config.json` and `tokenizer/`."""
    workdir = tmp_path_factory.mktemp("pretrain")
    params, model, _ = hf_io.load_hf(hf_dir, "RobertaForMaskedLM")
    tx, _ = optimizer.make_optimizer(ml_collections.ConfigDict(
        dict(peak_lr=1e-3, warmup_steps=1, total_steps=10, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)))
    rules = sharding.axis_rules(default_config().logical_axis_rules)
    state, shardings = steps.create_train_state(model, tx, sharding.make_mesh({"data": -1}), 0, rules)
    state = state.replace(step=jnp.asarray(3, jnp.int32), params=jax.device_put(params, shardings.params))
    saver = checkpoint.Checkpointer(str(workdir / "checkpoints"), every_steps=1, asynchronous=False)
    saver.save(3, state, {"epoch": 0, "position": 3})
    saver.close()
    model.config.to_json_file(str(workdir / workdir_files.MODEL_CONFIG))
    RobertaTokenizer.from_pretrained(hf_dir).save(workdir / "tokenizer")
    return str(workdir), params


def hf_logits(hf_model, inputs):
    with torch.no_grad():
        out = hf_model(**{k: torch.tensor(np.asarray(v, np.int64)) for k, v in inputs.items()})
    return (out.start_logits.numpy(), out.end_logits.numpy()) if "start_logits" in out else (out.logits.numpy(),)


@pytest.mark.parametrize("name", list(TASKS))
def test_task_end_to_end_exports_a_transformers_model(tmp_path, hf_dir, name):
    config = tiny_config(name, hf_dir)
    results = run.finetune_and_evaluate(config, str(tmp_path))

    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["final_step"] == 4 and saved["best_step"] in (2, 4)
    key = f"eval/{config.best_metric}"
    assert saved["best_metric"] == key and saved["best"][key] >= saved["final"][key]
    names = {*tasks.get_task(config.task).metric_names(config), "loss"}
    assert names == {k.removeprefix("eval/") for k in saved["final"] if not k.startswith("eval/best_")}
    assert saved == json.loads(json.dumps(results))
    assert json.loads((tmp_path / "best.json").read_text())["step"] == saved["best_step"]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train/loss" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(r["train/loss"]) for r in logged if "train/loss" in r)

    # best_hf: loads in transformers with nothing missing or new, labels named, same logits as ours.
    best = str(tmp_path / "best_hf")
    auto = getattr(transformers, TASKS[name]["auto"])
    hf_model, info = auto.from_pretrained(best, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf_model.eval()
    task = tasks.get_task(config.task)
    params, model, report = hf_io.load_hf(best, task.ARCHITECTURE, strict=True)
    data = load_task_data(config, RobertaTokenizer.from_pretrained(best), task)
    text = "a warm , funny film"
    assert transformers.AutoTokenizer.from_pretrained(best)(text)["input_ids"] == RobertaTokenizer.from_pretrained(
        best)(text)["input_ids"]
    inputs = {k: v[:2] for k, v in data.eval_features.items() if k in ("input_ids", "attention_mask")}
    ours = model.apply({"params": params}, *(jnp.asarray(inputs[k]) for k in ("input_ids", "attention_mask")))
    ours = ours if isinstance(ours, tuple) else (ours,)
    for a, b in zip(ours, hf_logits(hf_model, inputs), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-4, rtol=0)
    if data.labels is not None:
        assert hf_model.config.id2label == dict(enumerate(data.labels))
        assert hf_model.config.label2id == {label: i for i, label in enumerate(data.labels)}

    # The export holds the params of the best evaluation: its metrics come back from the files.
    eval_arrays = {k: jnp.asarray(v) for k, v in data.arrays("eval").items()}
    eval_arrays["weights"] = jnp.ones(len(eval_arrays["input_ids"]), jnp.float32)
    _, outputs = jax.jit(run.task_eval_fn(config, task, model))(params, eval_arrays, 0)
    rescored = task.score(config, jax.device_get(outputs), data.eval_features, data.eval_examples, data.labels)
    assert rescored[config.best_metric] == pytest.approx(saved["best"][key], abs=1e-6)


def test_resume_finishes_like_an_uninterrupted_run(tmp_path, hf_dir):
    config = tiny_config("sst2", hf_dir)
    config.checkpoint.keep = 3
    straight = run.finetune_and_evaluate(config, str(tmp_path / "a"))
    # The same run, its last checkpoint lost: restarted, it resumes at step 2 and trains steps 3 and 4 again.
    run.finetune_and_evaluate(config, str(tmp_path / "b"))
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    resumed = run.finetune_and_evaluate(config, str(tmp_path / "b"))
    assert resumed["final"] == straight["final"] and resumed["best"] == straight["best"]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # exact on CPU
    # A finished run started again trains nothing and reports the same.
    assert run.finetune_and_evaluate(config, str(tmp_path / "a"))["final"] == straight["final"]


def test_a_rerun_with_other_labels_or_length_stops_before_touching_the_workdir(tmp_path, hf_dir):
    config = tiny_config("sst2", hf_dir, total_steps=2)
    run.finetune_and_evaluate(config, str(tmp_path))
    fixed = json.loads((tmp_path / workdir_files.CONTRACT).read_text())
    assert (fixed["task"], fixed["labels"], fixed["data.max_length"], fixed["model.num_labels"]) == (
        "classification", ["0", "1"], 64, 2)
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    changed = tiny_config("sst2", hf_dir, total_steps=2)
    changed.data.update(labels="0,1,2", max_length=32)
    with pytest.raises(workdir_files.WorkdirError) as err:
        run.finetune_and_evaluate(changed, str(tmp_path))
    assert ("this run changes labels: ['0', '1'] -> ['0', '1', '2'], data.max_length: 64 -> 32, "
            "model.num_labels: 2 -> 3. Nothing was touched") in str(err.value)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()} == before
    # The same config continues it (here: finished, evaluated again).
    assert run.finetune_and_evaluate(config, str(tmp_path))["final_step"] == 2


def test_learns_its_training_sentences(tmp_path, hf_dir):
    """The gradient reaches the head and the encoder: ten epochs over the six sentences (dropout off) and the
    model classifies them all, its training loss down to a fraction of where it started. (The random tiny
    encoder gives every sentence nearly the same `<s>` vector, hence the high learning rate.)"""
    config = tiny_config("sst2", hf_dir, total_steps=30, eval_every_steps=30)
    config.model.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.optimizer.peak_lr = 1e-2
    config.checkpoint.every_steps = 30
    results = run.finetune_and_evaluate(config, str(tmp_path))
    assert results["final"]["eval/accuracy"] == 1.0
    curve = [loss for _, loss in sorted(losses(tmp_path).items())]
    assert len(curve) == 30 and np.mean(curve[-3:]) < 0.5 * np.mean(curve[:3])


def fresh_zeros(architecture, config):
    """Stand-ins for a head model's fresh params: zeros of the right shapes."""
    model = ARCHITECTURES[architecture](config)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def test_init_from_pretraining_workdir(tmp_path, pretraining_workdir):
    workdir, mlm_params = pretraining_workdir
    config = weights.initial_config(workdir).replace(num_labels=3)
    params, report = weights.load_initial(workdir, fresh_zeros("RobertaForSequenceClassification", config))
    assert sorted(report.missing) == sorted(
        f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")
    )
    assert not report.unexpected and not report.mismatched
    jax.tree.map(np.testing.assert_array_equal, params["roberta"], jax.device_get(mlm_params["roberta"]))
    assert params["classifier"]["out_proj"]["kernel"].shape == (32, 3)
    assert not np.any(params["classifier"]["out_proj"]["kernel"])  # the fresh value, kept
    assert weights.tokenizer_dir(workdir) == os.path.join(workdir, "tokenizer")
    # Multiple choice reads the pooler, which an MLM checkpoint lacks: left fresh, and reported.
    _, report = weights.load_initial(workdir, fresh_zeros("RobertaForMultipleChoice", config))
    assert {"roberta.pooler.dense.weight", "classifier.weight"} <= set(report.missing)
    with pytest.raises(ValueError, match="classifier.out_proj.weight"):  # a head of another label count
        hf_io.save_hf(str(tmp_path / "three"), ARCHITECTURES["RobertaForSequenceClassification"](config), params)
        weights.load_initial(str(tmp_path / "three"), fresh_zeros("RobertaForSequenceClassification",
                                                                        config.replace(num_labels=2)))

    results = run.finetune_and_evaluate(tiny_config("sst2", workdir), str(tmp_path / "ft"))
    assert results["final_step"] == 4 and np.isfinite(results["final"]["eval/loss"])
    exported = RobertaConfig.from_json_file(str(tmp_path / "ft" / "best_hf"))
    assert exported.architectures == ("RobertaForSequenceClassification",)
    assert exported.hidden_dropout_prob == 0.1


def test_rows_longer_than_the_position_table_are_refused(tmp_path, hf_dir):
    config = tiny_config("sst2", hf_dir)  # 66 positions: <s> ... </s> in 64 tokens
    config.data.max_length = 65
    with pytest.raises(ValueError, match=r"data.max_length=65 is longer .* allow \(64\)"):
        run.finetune_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("name", ["sst2", "stsb", "conll", "squad", "swag"])
def test_task_losses_equal_transformers(tmp_path, hf_dir, name):
    """loss_sum / count over a batch (dropout off) is the `transformers` head's own loss for the same labels."""
    config = tiny_config("sst2" if name == "stsb" else name, hf_dir)
    if name == "stsb":
        path = os.path.join(TASK_DATA, "stsb.jsonl")
        config.data.update(train_file=path, eval_file=path, regression=True)
    task = tasks.get_task(config.task)
    data = load_task_data(config, RobertaTokenizer.from_pretrained(hf_dir), task)
    architecture = task.ARCHITECTURE
    head_config = run.head_architecture(weights.initial_config(hf_dir), config, task, data.labels)
    torch.manual_seed(1)
    hf_model = getattr(transformers, architecture)(transformers.RobertaConfig(**head_config.to_dict())).eval()
    hf_model.save_pretrained(tmp_path)
    params, model, _ = hf_io.load_hf(str(tmp_path), architecture, strict=True)

    batch = next(FeatureBatches(data.arrays("train"), 3, shuffle=False, process_index=0,
                                             process_count=1))
    loss_sum, (count, _) = run.task_loss_fn(config, task, model)(
        params, {k: jnp.asarray(v) for k, v in batch.items()}, None
    )
    inputs = {k: torch.tensor(np.asarray(batch[k], np.int64)) for k in ("input_ids", "attention_mask")}
    targets = {k: torch.tensor(batch[k]) for k in task.TARGETS}
    if not config.data.regression:
        targets = {k: v.long() for k, v in targets.items()}
    with torch.no_grad():
        expected = hf_model(**inputs, **targets).loss.item()
    assert float(loss_sum / count) == pytest.approx(expected, rel=1e-5)


def test_padding_rows_change_no_loss(hf_dir):
    config = tiny_config("conll", hf_dir)
    task = tasks.get_task("ner")
    data = load_task_data(config, RobertaTokenizer.from_pretrained(hf_dir), task)
    head_config = run.head_architecture(weights.initial_config(hf_dir), config, task, data.labels)
    model = ARCHITECTURES["RobertaForTokenClassification"](head_config)
    params, _ = weights.load_initial(hf_dir, fresh_zeros("RobertaForTokenClassification", head_config))
    loss_fn = jax.jit(run.task_loss_fn(config, task, model), static_argnums=2)
    arrays = data.arrays("eval")  # 4 sentences; batches of 3 leave 2 padding rows
    batches = list(FeatureBatches(arrays, 3, shuffle=False, num_epochs=1, drop_remainder=False,
                                               process_index=0, process_count=1))
    assert [b["weights"].tolist() for b in batches] == [[1, 1, 1], [1, 0, 0]]
    sums = [loss_fn(params, b, None) for b in batches]
    whole = loss_fn(params, {**arrays, "weights": np.ones(4, np.float32)}, None)
    assert float(sums[0][0] + sums[1][0]) == pytest.approx(float(whole[0]), rel=1e-5)
    assert float(sums[0][1][0] + sums[1][1][0]) == float(whole[1][0]) > 0


def test_feature_batches_shuffle_resume_and_host_shares():
    arrays = {"x": np.arange(10), "y": np.arange(10) * 2}
    batches = FeatureBatches(arrays, 4, seed=3, process_index=0, process_count=1)
    assert batches.steps_per_epoch == 2
    straight = [next(batches)["x"].tolist() for _ in range(5)]
    epoch0 = np.random.default_rng([3, 0]).permutation(10)
    assert straight[:2] == [epoch0[:4].tolist(), epoch0[4:8].tolist()]
    assert straight[2] == np.random.default_rng([3, 1]).permutation(10)[:4].tolist()

    again = FeatureBatches(arrays, 4, seed=3, process_index=0, process_count=1)
    next(again)
    state = json.loads(json.dumps(again.get_state()))
    resumed = FeatureBatches(arrays, 4, seed=3, process_index=0, process_count=1)
    resumed.set_state(state)
    assert [next(resumed)["x"].tolist() for _ in range(4)] == straight[1:]
    with pytest.raises(ValueError, match="global_batch_size=4"):
        FeatureBatches(arrays, 2, seed=3, process_count=1).set_state(state)

    hosts = [FeatureBatches(arrays, 4, seed=3, process_index=p, process_count=2) for p in (0, 1)]
    for global_batch in straight[:3]:
        shares = [next(h) for h in hosts]
        assert shares[0]["x"].tolist() + shares[1]["x"].tolist() == global_batch
        assert all(b["y"].tolist() == [2 * x for x in b["x"]] for b in shares)


@pytest.mark.parametrize("name", list(TASKS))
def test_configs_hold_the_recipe(name):
    c = load_config(name)
    recipe = {"sst2": (1e-5, 32, 10, 128), "conll": (5e-5, 32, 3, 128), "squad": (1.5e-5, 48, 2, 384),
              "swag": (1e-5, 16, 3, 128)}[name]
    assert (c.optimizer.peak_lr, c.batch_size, c.num_epochs, c.data.max_length) == recipe
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.eps, c.optimizer.weight_decay) == (0.9, 0.98, 1e-6, 0.1)
    assert c.optimizer.warmup_ratio == 0.06 and c.task == TASKS[name]["task"]
    assert c.best_metric in tasks.get_task(c.task).metric_names(c)
    assert os.path.normpath(os.path.join(REPO, "..", "shared", "data")) in c.data.train_file
    total, opt = run.schedule(c, num_train=1000)
    assert total == int(np.ceil(c.num_epochs * (1000 // c.batch_size)))
    assert opt.warmup_steps == round(0.06 * total) and opt.total_steps == total


def test_command_line(tmp_path, hf_dir, compile_once):
    """`python finetune.py` with the overrides of `tiny_config` on the command line."""
    base, tiny = (sweep.config_fields(c) for c in (load_config("sst2"), tiny_config("sst2", hf_dir)))
    overrides = [f"--config.{k}={v}" for k, v in tiny.items() if v != base[k]]
    cmd = [sys.executable, os.path.join(REPO, "finetune.py"), f"--config={REPO}/configs/finetune/sst2.py",
           f"--workdir={tmp_path}", *overrides]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=compile_once)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = json.loads(out.stdout[out.stdout.index("{"):])
    assert printed["final_step"] == 4 and printed["best_metric"] == "eval/accuracy"
    assert printed == {k: v for k, v in json.loads((tmp_path / "eval_results.json").read_text()).items()
                       if k in printed}
    assert (tmp_path / "best_hf" / "model.safetensors").exists()
    assert json.loads((tmp_path / "finetune_config.json").read_text())["init_from"] == hf_dir


def test_labels_come_from_the_training_file_and_an_unseen_eval_label_is_an_error(tmp_path, tok):
    (tmp_path / "train.tsv").write_text("label\ttext_a\n1\ta warm film\n0\tthe plot goes nowhere\n")
    (tmp_path / "dev.tsv").write_text("label\ttext_a\n0\tdull\n\n2\ta neutral film\n1\tfunny\n")
    c = load_config("sst2")
    c.data.update(train_file=str(tmp_path / "train.tsv"), eval_file=str(tmp_path / "dev.tsv"), max_length=16)
    # The file, the line (after a blank one) and the label.
    with pytest.raises(ValueError, match=rf"^{tmp_path}/dev.tsv:4: label '2' is not one of the labels of the training "
                                         rf"file {tmp_path}/train.tsv \(\['0', '1'\]\)"):
        load_task_data(c, tok, tasks.get_task("classification"))
    # A .json list has no lines: the example's number.
    rows = [{"sentence": "dull", "label": "0"}, {"sentence": "meh", "label": "2"}]
    (tmp_path / "dev.json").write_text(json.dumps(rows))
    c.data.eval_file = str(tmp_path / "dev.json")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/dev.json: example 2: label '2' is not one of the labels"):
        load_task_data(c, tok, tasks.get_task("classification"))
    c.data.labels = "0,1,2"  # the config's list: every label has an output
    assert load_task_data(c, tok, tasks.get_task("classification")).labels == ["0", "1", "2"]

    # NER: a tag seen only in the eval file, on line 23 of conll.txt.
    conll = open(os.path.join(TASK_DATA, "conll.txt")).read()
    (tmp_path / "train.txt").write_text(conll.replace("B-MISC", "O"))
    c = load_config("conll")
    c.data.update(train_file=str(tmp_path / "train.txt"), eval_file=os.path.join(TASK_DATA, "conll.txt"),
                  max_length=32)
    with pytest.raises(ValueError, match=r"conll.txt:23: label 'B-MISC' is not one of the labels of the training file"):
        load_task_data(c, tok, tasks.get_task("ner"))


def test_extra_eval_files_are_scored_beside_the_eval_file(tmp_path, hf_dir):
    """The same file as an extra eval set scores exactly as the eval file, under eval/<name>/."""
    config = tiny_config("sst2", hf_dir, total_steps=2, eval_every_steps=2)
    config.data.extra_eval_files = f"again={os.path.join(TASK_DATA, 'sst2.tsv')}"
    results = run.finetune_and_evaluate(config, str(tmp_path))
    final = results["final"]
    assert {k for k in final if k.startswith("eval/again/")} == {
        "eval/again/accuracy", "eval/again/f1", "eval/again/matthews_correlation", "eval/again/loss"}
    for name in ("accuracy", "f1", "matthews_correlation", "loss"):
        assert final[f"eval/again/{name}"] == final[f"eval/{name}"]
