"""Downstream probes during pretraining (`finetune.probe`): the pretraining losses are the same with and without
them, each probe step is logged once across a kill and resume, and the config, layering and freezing checks."""

import json
import os
import re
import signal

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from roberta_jax.finetune import probe
from roberta_jax.finetune import run as finetune_run
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.train import loop, pretrain, runtime, validate
from roberta_jax.train import workdir as workdir_files
from roberta_jax.train.config import PROBE_FIELDS, default_config, probe_task
from tests.test_layering import REPO, package_imports
from tests.train_runs import losses, run_train

PROBES_CONFIG = "configs/tiny_probes.py"
SST2 = str(REPO / "tests" / "data" / "tasks" / "sst2.tsv")  # 6 sentences: 3 positive, 3 negative
PROBE = dict(train_file=SST2, eval_file=SST2, steps=4, batch_size=4, max_seq_length=32, lr=5e-4)
DOWNSTREAM = ["downstream/sst2/accuracy", "downstream/sst2/f1", "downstream/sst2/loss",
              "downstream/sst2/matthews_correlation", "perf/probe_seconds/sst2"]

# Kills train.py (SIGKILL, no chance to save) as it is about to checkpoint step KILL_AT: after that step's probe.
KILL_BEFORE_SAVE = """
import os, runpy, signal, sys
from roberta_jax.train import loop
save, kill_at = loop._save_if_finite, int(os.environ["KILL_AT"])
def save_or_die(step, *args, **kwargs):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return save(step, *args, **kwargs)
loop._save_if_finite = save_or_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def probe_args(tmp_path):
    return ["--config.total_steps=20", "--config.checkpoint.every_steps=5", "--config.checkpoint.asynchronous=False",
            f"--config.compilation_cache_dir={tmp_path}/cache"]


def sst2_probe_args():
    return ["--config.probes.every_steps=10", *(f"--config.probes.tasks.sst2.{k}={v}" for k, v in PROBE.items())]


def records(workdir):
    with open(os.path.join(workdir, workdir_files.METRICS), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def probe_records(workdir):
    return [r for r in records(workdir) if "downstream/sst2/accuracy" in r]


def test_probes_leave_the_losses_alone_and_are_logged_once_across_a_kill(tmp_path, corpus):
    plain = tmp_path / "plain"
    run_train(plain, corpus, *probe_args(tmp_path))
    assert not probe_records(plain)

    probed = tmp_path / "probed"
    wrapper = tmp_path / "kill.py"
    wrapper.write_text(KILL_BEFORE_SAVE)
    killed = run_train(probed, corpus, *probe_args(tmp_path), *sst2_probe_args(), wrapper=[str(wrapper)],
                       env={"KILL_AT": "10"}, succeeds=False, config=PROBES_CONFIG)
    assert killed.returncode == -signal.SIGKILL
    # The probe of step 10 ran and was logged; its checkpoint was never saved, so the run resumes from step 5.
    (before,) = probe_records(probed)
    assert before["step"] == 10 and sorted(k for k in before if k != "step") == DOWNSTREAM
    saved = sorted(int(d) for d in os.listdir(probed / workdir_files.CHECKPOINTS) if d.isdigit())
    assert saved == [5]

    run_train(probed, corpus, *probe_args(tmp_path), *sst2_probe_args(), config=PROBES_CONFIG)
    # Bit-identical losses: the probes read the params and nothing else of the run.
    assert losses(probed) == losses(plain) and sorted(losses(plain)) == list(range(1, 21))
    after = probe_records(probed)
    assert [r["step"] for r in after] == [10, 20]  # the dropped record of step 10 logged again, once
    # The probe's own seed fixes its head, dropout and batches: step 10 probed again gives the same scores.
    assert {k: after[0][k] for k in DOWNSTREAM[:-1]} == {k: before[k] for k in DOWNSTREAM[:-1]}
    # A probe is fine-tuning: fine-tuning's own run (`finetune_and_evaluate`, finetune.py's) from the checkpoint of
    # step 20 with the probe's settings scores exactly what the probe of step 20 logged.
    spec = ml_collections.ConfigDict({**PROBE_FIELDS, **PROBE})
    config = probe.probe_finetune_config(spec)
    config.update(init_from=str(probed), dtype="float32", progress=False, compilation_cache_dir="none")
    final = finetune_run.finetune_and_evaluate(config, str(tmp_path / "finetuned"))["final"]
    assert {f"downstream/sst2/{k.removeprefix('eval/')}": v for k, v in final.items() if "best" not in k} == {
        k: after[1][k] for k in DOWNSTREAM[:-1]}
    for record in after:  # 6 dev sentences, 3 of each label
        assert record["downstream/sst2/accuracy"] * 6 == pytest.approx(round(record["downstream/sst2/accuracy"] * 6))
        assert 0 < record["perf/probe_seconds/sst2"] < 120


def test_interval_callbacks_run_on_the_interval_and_at_the_last_step():
    callback = loop.IntervalCallback(10, lambda state, step: {})
    assert [s for s in range(1, 26) if callback.due(s, 25)] == [10, 20, 25]


def sst2_config(**fields):
    c = default_config()
    c.data.train_files = SST2
    c.probes.every_steps = 10
    return probe_task(c, "sst2", train_file=SST2, eval_file=SST2, **fields)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.probes, "tasks", ml_collections.ConfigDict()),
     "--config.probes.tasks={}: probes.every_steps=10 has nothing to run"),
    (lambda c: c.probes.tasks.sst2.update(mode="liner"),
     "--config.probes.tasks.sst2.mode='liner': not one of finetune, linear; did you mean 'linear'?"),
    (lambda c: c.probes.tasks.sst2.update(eval_file="missing/dev.tsv"),
     "--config.probes.tasks.sst2.eval_file='missing/dev.tsv': no such file"),
    (lambda c: c.probes.tasks.sst2.update(max_seq_length=600),
     "--config.probes.tasks.sst2.max_seq_length=600: rows must fit the position table "
     "(model.max_position_embeddings - 2 = 512); lower it to at most 512"),
    (lambda c: c.probes.tasks.sst2.update(batch_size=3),
     "--config.probes.tasks.sst2.batch_size=3: does not split over the 2 batch shards"),
    (lambda c: setattr(c.probes.tasks, "sst2", ml_collections.ConfigDict(dict(c.probes.tasks.sst2, trian_file=SST2))),
     f"--config.probes.tasks.sst2.trian_file={SST2!r}: not a probe field; did you mean 'train_file'?"),
])
def test_bad_probe_configs_name_the_field(change, message):
    c = sst2_config()
    change(c)
    with pytest.raises(validate.ConfigError, match=re.escape(message)):
        validate.pretraining(c, num_devices=2, num_hosts=1)


def test_a_good_probe_config_passes_and_probes_off_need_no_tasks():
    validate.pretraining(sst2_config(mode="linear", batch_size=8), num_devices=2, num_hosts=1)
    off = sst2_config()
    off.probes.every_steps = 0
    off.probes.tasks.sst2.train_file = "missing.tsv"  # not read when the probes are off
    validate.pretraining(off, num_devices=1, num_hosts=1)


def test_probe_task_names_the_nearest_field():
    with pytest.raises(ValueError, match=r"probe_task\('sst2'\): unknown field 'eval_fle'; did you mean 'eval_file'\?"):
        probe_task(default_config(), "sst2", eval_fle=SST2)
    with pytest.raises(ValueError, match=r"unknown field 'warmup'; the fields are task, train_file, eval_file, steps, "
                                         r"mode, lr, batch_size, max_seq_length, seed$"):
        probe_task(default_config(), "sst2", warmup=10)


def test_pretraining_refuses_probes_it_cannot_build_before_touching_the_workdir(tmp_path):
    with pytest.raises(ValueError, match=r"probes.every_steps=10, but nothing builds the probes: call "
                                         r"train_and_evaluate\(..., make_callbacks=roberta_jax.finetune.probe"):
        pretrain.train_and_evaluate(sst2_config(), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_train_layer_does_not_import_finetune_and_train_py_wires_the_probes():
    train_imports = [i for i in package_imports(REPO) if i.source.startswith("roberta_jax.train")]
    assert train_imports and not [i for i in train_imports if i.target.startswith("roberta_jax.finetune")]
    entry = (REPO / "train.py").read_text(encoding="utf-8")
    assert "from roberta_jax.finetune.probe import probe_callbacks" in entry
    assert "make_callbacks=probe_callbacks" in entry


def test_a_linear_probe_moves_the_head_only():
    params = {"roberta": {"kernel": jnp.ones((2, 2))}, "classifier": {"kernel": jnp.ones((2, 2))}}
    batch = jnp.asarray([[1.0, 2.0]])

    def loss_fn(p, batch, _rng):  # a head on top of the encoder's features
        return jnp.sum((batch @ p["roberta"]["kernel"]) @ p["classifier"]["kernel"]), (1.0, 0.0)

    grads = jax.grad(lambda p: probe.frozen_encoder_loss(loss_fn)(p, batch, None)[0])(params)
    assert float(jnp.abs(grads["roberta"]["kernel"]).sum()) == 0.0
    assert grads["classifier"]["kernel"].tolist() == [[3.0, 3.0], [3.0, 3.0]]  # features [3, 3] per output
    # AdamW's weight decay moves even a parameter with no gradient; the frozen encoder does not move.
    tx = probe.frozen_encoder(optax.adamw(0.1, weight_decay=0.5))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["roberta"]["kernel"]).sum()) == 0.0
    # Adam's first step is lr * sign(g) = 0.1, plus the decay 0.1 * 0.5 * 1.
    assert updates["classifier"]["kernel"].ravel().tolist() == pytest.approx([-0.15] * 4, rel=1e-5)


def test_a_linear_probe_trains_a_copy_of_the_head_only(tmp_path, tok):
    config = default_config()
    config.update(dtype="float32", compilation_cache_dir="none")
    probe_task(config, "sst2", train_file=SST2, eval_file=SST2, steps=3, batch_size=2, max_seq_length=16, lr=1e-2,
               mode="linear")
    arch = RobertaConfig(vocab_size=50265, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=34)
    with runtime.Runtime(config, str(tmp_path), workdir_files.TRAIN_CONFIG) as rt:
        state, _ = rt.create_state(RobertaForMaskedLM(arch, **rt.model_kwargs()), optax.adamw(1e-3))
        before = jax.device_get(state.params)
        probed = probe.Probe("sst2", config.probes.tasks.sst2, rt, tok, arch)
        for _ in range(2):  # the fresh state the probe starts from is there again for its next call
            trained = jax.device_get(probed.train(state.params).params)
            # The encoder starts from the pretraining params and stays there; the head moves from its init.
            assert not differs(trained["roberta"], before["roberta"])
            assert differs(trained["classifier"], jax.device_get(probed.fresh.params["classifier"]))
        # Compiled once: the second call reused the first one's programs.
        assert probed.train_step._cache_size() == probed.start._cache_size() == 1
        # The pretraining params are still there, as they were: the probe trained copies and gave none away.
        assert not differs(jax.device_get(state.params), before)


def differs(a, b) -> bool:
    """Whether any leaf of the trees `a` and `b` differs."""
    return any(jax.tree.leaves(jax.tree.map(lambda x, y: bool((x != y).any()), a, b)))
