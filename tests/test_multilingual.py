"""XLM-R and CamemBERT end to end: train.py on the Korean document with a unigram tokenizer trained from it (the
export is an `XLMRobertaForMaskedLM` that a fill-mask pipeline runs), finetune.py from an XLM-R-format and a
CamemBERT-format directory; the packer's rows and the masking under CamemBERT's special ids."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roberta_jax.data.batches import build_pretraining_data
from roberta_jax.data.sentencepiece import SentencePieceTokenizer
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.finetune import run, tasks
from roberta_jax.finetune.data import load_task_data
from roberta_jax.model import hf_io
from roberta_jax.train import cli, masking, objectives
from tests.conftest import KO_DOC
from tests.train_runs import REPO, losses, run_train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=66)


def test_pretrain_unigram_on_korean_exports_xlmr_for_fill_mask(tmp_path):
    if not KO_DOC.exists():
        pytest.skip(f"no {KO_DOC}")
    run_train(tmp_path, str(KO_DOC), "--config.tokenizer.kind=unigram", "--config.tokenizer.vocab_size=600",
              "--config.total_steps=40",
              "--config.export_hf=True", "--config.data.eval_fraction=0.0")
    curve = losses(tmp_path)
    assert len(curve) == 40
    first, last = np.mean([curve[s] for s in range(1, 6)]), np.mean([curve[s] for s in range(36, 41)])
    assert last < first - 0.1, curve

    tok = load_tokenizer(tmp_path / "tokenizer")
    assert (type(tok), tok.vocab_size, tok.pad_token_id, tok.mask_token_id) == (SentencePieceTokenizer, 600, 1, 599)
    export = str(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("xlm-roberta", ["XLMRobertaForMaskedLM"])
    hf_model, info = transformers.AutoModelForMaskedLM.from_pretrained(export, output_loading_info=True)
    assert type(hf_model).__name__ == "XLMRobertaForMaskedLM"
    assert {k: v for k, v in info.items() if v} == {}, info
    hf_tok = transformers.AutoTokenizer.from_pretrained(export)
    assert type(hf_tok).__name__ == "XLMRobertaTokenizer"

    # The pipeline's top 5 at <mask> are our model's: the same ids and probabilities.
    text = "RoBERTa는 BERT를 <mask> 모델입니다."
    fill = transformers.pipeline("fill-mask", model=hf_model, tokenizer=hf_tok, device="cpu")(text, top_k=5)
    params, model, _ = hf_io.load_hf(export, "XLMRobertaForMaskedLM", strict=True)
    ids = tok(text)["input_ids"]
    assert ids == hf_tok(text)["input_ids"] and ids.count(tok.mask_token_id) == 1
    logits = model.apply({"params": params}, jnp.asarray([ids]))[0, ids.index(tok.mask_token_id)]
    probs = np.asarray(jax.nn.softmax(logits))
    top = np.argsort(-probs)[:5]
    assert [r["token"] for r in fill] == top.tolist()
    np.testing.assert_allclose([r["score"] for r in fill], probs[top], atol=1e-5)


def test_packing_and_masking_use_camemberts_own_special_ids(spm_dir, texts, tmp_path):
    tok = SentencePieceTokenizer.from_pretrained(spm_dir, model_type="camembert")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(t for t in texts if t.strip()), encoding="utf-8")
    data = build_pretraining_data(str(corpus), tok, max_seq_length=16, drop_remainder=False)
    rows = np.asarray(data.train.input_ids)
    assert (rows[:, 0] == 5).all()  # CamemBERT's <s>
    assert (rows[:-1, -1] == 6).all()  # </s>
    assert data.train.pad_id == 1 and (rows[-1, data.train.last_row_length:] == 1).all()

    special = objectives.never_masked_ids(tok, tok.vocab_size)
    assert special == (0, 1, 2, 3, 4, 5, 6) and np.isin(rows, special).any()
    out = masking.mask_tokens(
        jax.random.key(0), jnp.asarray(rows), mask_token_id=tok.mask_token_id, vocab_size=tok.vocab_size,
        special_ids=special, mlm_probability=0.5, mask_ratio=0.0, random_ratio=1.0,
    )
    chosen = np.asarray(out.labels)[np.asarray(out.weights) > 0]
    assert len(chosen) > rows.size // 4 and not np.isin(chosen, special).any()
    drawn = np.asarray(out.input_ids)[np.asarray(out.input_ids) != rows]
    assert len(drawn) and not np.isin(drawn, [*special, tok.mask_token_id]).any()


@pytest.mark.parametrize("prefix", ["XLMRoberta", "Camembert"])
def test_finetune_from_an_xlmr_or_camembert_directory(spm_dir, tmp_path, prefix):
    init = tmp_path / prefix
    hf_tok = getattr(transformers, f"{prefix}TokenizerFast").from_pretrained(spm_dir)
    hf_tok.save_pretrained(init)
    torch.manual_seed(0)
    hf_config = getattr(transformers, f"{prefix}Config")(vocab_size=len(hf_tok), **TINY)
    getattr(transformers, f"{prefix}ForMaskedLM")(hf_config).save_pretrained(init)
    config = cli.load_config(os.path.join(REPO, "configs", "finetune", "sst2.py"))
    path = os.path.join(REPO, "tests", "data", "tasks", "sst2.tsv")
    config.init_from = str(init)
    config.data.update(train_file=path, eval_file=path, max_length=64)
    config.update(dtype="float32", batch_size=2, eval_batch_size=4, total_steps=2, eval_every_steps=2,
                  progress=False, log_every_steps=1)
    config.checkpoint.update(every_steps=2, asynchronous=False)
    run.finetune_and_evaluate(config, str(tmp_path / "run"))

    best = str(tmp_path / "run" / "best_hf")
    hf_model, info = transformers.AutoModelForSequenceClassification.from_pretrained(best, output_loading_info=True)
    assert type(hf_model).__name__ == f"{prefix}ForSequenceClassification"
    assert {k: v for k, v in info.items() if v} == {}, info
    task = tasks.get_task(config.task)
    params, model, _ = hf_io.load_hf(best, task.ARCHITECTURE, strict=True)
    tok = load_tokenizer(best)
    assert type(tok) is SentencePieceTokenizer and tok.get_vocab() == hf_tok.get_vocab()
    data = load_task_data(config, tok, task)
    ids, mask = data.eval_features["input_ids"][:3], data.eval_features["attention_mask"][:3]
    assert (ids[:, 0] == hf_tok.bos_token_id).all() and (ids[mask == 0] == 1).all()  # <s> (0, CamemBERT's 5), <pad>
    texts = [e.text_a for e in data.eval_examples[:3]]
    assert ids.tolist() == hf_tok(texts, padding="max_length", max_length=64, truncation=True)["input_ids"]
    ours = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=0)
