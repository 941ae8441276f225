"""Next-sentence prediction for the pair input formats: the head's loss and accuracy against a hand
computation, the step's metrics, the config checks, and train.py with segment pairs (the same losses on a
data x fsdp x tensor mesh, an exact resume, an HF export transformers loads while the checkpoint keeps NSP)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import safetensors.numpy

from roberta_jax.data.batches import NO_LABEL
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import RobertaForMaskedLM, init_params
from roberta_jax.model.layers import RobertaModel
from roberta_jax.tools import convert
from roberta_jax.train import aot, checkpoint, metrics, objectives, steps, validate
from roberta_jax.train.config import default_config
from tests.train_runs import losses, run_train

CONFIG = RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)


def pair_batch():
    """Four rows of 10 tokens, three masked slots each, NSP labels next / random / random / filler row."""
    rng = np.random.default_rng(0)
    input_ids = rng.integers(5, 40, (4, 10)).astype(np.int32)
    input_ids[:, 0], input_ids[:, 4:6], input_ids[:, 9] = 0, 2, 2  # <s> A </s></s> B </s>
    return {"input_ids": jnp.asarray(input_ids), "attention_mask": jnp.ones((4, 10), jnp.int32),
            "positions": jnp.asarray(np.tile([1, 6, 7], (4, 1)), jnp.int32),
            "labels": jnp.asarray(rng.integers(5, 40, (4, 3)), jnp.int32),
            "weights": jnp.asarray([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], jnp.float32),
            "nsp_labels": jnp.asarray([0, 1, 1, NO_LABEL], jnp.int32)}


def by_hand(params, batch):
    """(mean NSP cross-entropy, NSP accuracy) over the three real pairs, in float64 numpy from the encoder's <s>."""
    hidden, _ = RobertaModel(CONFIG, add_pooling_layer=False).apply(
        {"params": params["roberta"]}, batch["input_ids"], batch["attention_mask"])
    head = jax.tree.map(lambda x: np.asarray(x, np.float64), params["next_sentence"])
    pooler = head["pooler"]["dense"]
    pooled = np.tanh(np.asarray(hidden[:, 0], np.float64) @ pooler["kernel"] + pooler["bias"])
    logits = pooled @ head["seq_relationship"]["kernel"] + head["seq_relationship"]["bias"]
    labels = np.asarray(batch["nsp_labels"][:3])
    logits = logits[:3]
    xent = np.log(np.exp(logits).sum(-1)) - logits[np.arange(3), labels]
    return xent.mean(), (logits.argmax(-1) == labels).mean()


def test_nsp_loss_and_accuracy_are_the_hand_computed_ones_in_loss_eval_and_train_step():
    model = RobertaForMaskedLM(CONFIG, next_sentence=True)
    params = init_params(model, jax.random.key(1))
    # Large head weights, so the logits differ and the accuracy is not a coin's by construction.
    params["next_sentence"] = jax.tree.map(lambda x: x * 30.0, params["next_sentence"])
    batch = pair_batch()
    nsp_mean, nsp_accuracy = by_hand(params, batch)
    mlm_params = {k: v for k, v in params.items() if k != "next_sentence"}
    mlm_sum, (count, _) = objectives.mlm_loss(RobertaForMaskedLM(CONFIG))(mlm_params, batch, None)
    mlm_mean = float(mlm_sum / count)
    assert float(count) == 6.0

    prepare = objectives.nsp_prepare(lambda rng, b: b)
    prepared = prepare(None, batch)
    np.testing.assert_allclose(prepared["nsp_weights"], [2.0, 2.0, 2.0, 0.0])  # 6 masked tokens / 3 pairs
    loss_sum, (count, _, ratios) = objectives.mlm_nsp_loss(model)(params, prepared, None)
    np.testing.assert_allclose(loss_sum / count, mlm_mean + nsp_mean, rtol=1e-5)
    np.testing.assert_allclose(ratios["nsp_loss"][0] / ratios["nsp_loss"][1], nsp_mean, rtol=1e-5)
    assert float(ratios["nsp_loss"][1]) == 3.0
    np.testing.assert_allclose(ratios["nsp_accuracy"][0] / 3.0, nsp_accuracy, rtol=1e-6)

    sums, _ = steps.make_eval_step(objectives.mlm_nsp_loss(model), seed=0, prepare=prepare)(params, batch, 0)
    evaluated = steps.ratio_metrics(jax.device_get(sums), "eval")
    np.testing.assert_allclose([evaluated["eval/nsp_loss"], evaluated["eval/nsp_accuracy"], evaluated["eval/mlm_loss"]],
                               [nsp_mean, nsp_accuracy, mlm_mean], rtol=1e-5)

    # Two microbatches (rows 0, 2 and 1, 3): the step's loss is still the mean MLM loss plus the mean NSP loss.
    tx = optax.sgd(0.0)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             nonfinite_streak=jnp.zeros((), jnp.int32), nonfinite_total=jnp.zeros((), jnp.int32))
    step = steps.make_train_step(tx, lambda s: 0.0, objectives.mlm_nsp_loss(model), seed=0, num_micro=2,
                                 prepare=prepare)
    _, logged = jax.jit(step)(state, batch)
    np.testing.assert_allclose([logged["train/loss"], logged["train/nsp_loss"], logged["train/nsp_accuracy"],
                                logged["train/mlm_loss"]], [mlm_mean + nsp_mean, nsp_mean, nsp_accuracy, mlm_mean],
                               rtol=1e-5)


def test_the_head_exists_only_with_next_sentence():
    assert "next_sentence" not in init_params(RobertaForMaskedLM(CONFIG), jax.random.key(0))
    head = init_params(RobertaForMaskedLM(CONFIG, next_sentence=True), jax.random.key(0))["next_sentence"]
    assert jax.tree.map(np.shape, head) == {"pooler": {"dense": {"kernel": (16, 16), "bias": (16,)}},
                                            "seq_relationship": {"kernel": (16, 2), "bias": (2,)}}


def test_the_ahead_of_time_steps_of_a_pair_format_carry_the_head_and_the_labels():
    config = data_config(input_format="segment_pair")
    config.model.update(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        vocab_size=64, max_position_embeddings=34)
    config.update(batch_size=4, dtype="float32")
    config.data.max_seq_length = 32
    compiled = aot.compile_steps(config, jax.devices()[:1])
    assert compiled.model.next_sentence
    _, batch = compiled.train.args_info[0]
    assert batch["nsp_labels"].shape == (4,) and "next_sentence" in compiled.model.init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]


def data_config(**data) -> ml_collections.ConfigDict:
    c = default_config()
    c.data.train_files = "corpus.txt"
    c.data.update(data)
    return c


@pytest.mark.parametrize("data, message", [
    (dict(input_format="segment_pairs"), "--config.data.input_format='segment_pairs': not one of full_sentences, "
                                         "doc_sentences, segment_pair, sentence_pair; did you mean 'segment_pair'?"),
    (dict(input_format="sentence_pair", cross_document_attention=False),
     "--config.data.cross_document_attention=False: a sentence_pair row is one pair whose A and B must see each"),
    (dict(input_format="segment_pair", max_seq_length=5),
     "--config.data.max_seq_length=5: a pair row <s> A </s></s> B </s> needs at least 6 tokens"),
    (dict(input_format="segment_pair", prepared="/data/shards"),
     "--config.data.input_format='segment_pair': prepared data (/data/shards) holds FULL-SENTENCES rows"),
])
def test_config_checks_of_the_pair_formats(data, message):
    with pytest.raises(validate.ConfigError) as err:
        validate.pretraining(data_config(**data), num_devices=1, num_hosts=1)
    assert str(err.value).startswith(message)
    validate.pretraining(data_config(input_format="sentence_pair"), num_devices=1, num_hosts=1)


PAIRS = ["--config.data.input_format=segment_pair", "--config.checkpoint.every_steps=3",
         "--config.model.hidden_dropout_prob=0.1", "--config.model.attention_probs_dropout_prob=0.1"]
MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def nsp_losses(workdir):
    logged = metrics.read_metrics(str(workdir))
    return {step: m["train/nsp_loss"] for step, m in logged.items() if "train/nsp_loss" in m}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, corpus):
    """Six steps of segment pairs on one device, exported; (workdir, train.py's stderr)."""
    workdir = tmp_path_factory.mktemp("pairs_one_device")
    out = run_train(workdir, corpus, *PAIRS, "--config.total_steps=6", "--config.export_hf=True")
    return workdir, out.stderr


def test_segment_pairs_agree_across_meshes_and_resume_exactly(tmp_path, corpus, one_device):
    """Steps 1-3 on data=2 x fsdp=2 x tensor=2 from scratch, 4-6 restored onto one device: one device's losses."""
    run_train(tmp_path, corpus, *PAIRS, "--config.total_steps=3", *MESH, devices=8)
    run_train(tmp_path, corpus, *PAIRS, "--config.total_steps=6")
    for read in (losses, nsp_losses):
        straight, split = read(one_device[0]), read(tmp_path)
        assert sorted(split) == sorted(straight) == list(range(1, 7))
        np.testing.assert_allclose([split[s] for s in straight], [straight[s] for s in straight], atol=1e-5, rtol=0)
    assert abs(nsp_losses(tmp_path)[1] - np.log(2)) < 0.1  # a fresh head guesses


def test_export_loads_in_transformers_while_the_checkpoint_keeps_the_nsp_head(one_device, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    workdir, stderr = one_device
    left_out = ("next_sentence.pooler.dense.bias, next_sentence.pooler.dense.weight, "
                "next_sentence.seq_relationship.bias, next_sentence.seq_relationship.weight")
    assert f"left out 4 weights that RobertaForMaskedLM has not (kept in the checkpoints): {left_out}" in stderr
    hf_model, info = transformers.AutoModelForMaskedLM.from_pretrained(workdir / "hf", output_loading_info=True)
    assert type(hf_model).__name__ == "RobertaForMaskedLM"
    assert {k: v for k, v in info.items() if v} == {}, info
    assert json.loads((workdir / "workdir.json").read_text())["next_sentence_head"] is True
    params, step = checkpoint.load_params(str(workdir))
    assert step == 6 and set(params["next_sentence"]) == {"pooler", "seq_relationship"}
    np.testing.assert_array_equal(hf_model.roberta.embeddings.word_embeddings.weight.detach().numpy(),
                                  params["roberta"]["embeddings"]["word_embeddings"]["embedding"])
    # The checkpoint converted later: the same weights, the same names left out.
    convert.main(["to-hf", str(workdir), str(tmp_path / "converted")])
    assert f"left out 4 weights RobertaForMaskedLM has not: {left_out}" in capsys.readouterr().out
    exported, converted = (safetensors.numpy.load_file(d / "model.safetensors") for d in (workdir / "hf",
                                                                                           tmp_path / "converted"))
    assert sorted(exported) == sorted(converted) and not any(k.startswith("next_sentence") for k in converted)
