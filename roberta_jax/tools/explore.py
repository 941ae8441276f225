"""Looking inside a checkpoint and the input pipeline; the notebooks in `notebooks/` call these.

    ckpt = load_checkpoint("runs/tiny")           # a pretraining workdir, or an HF directory (local or gs://)
    fill_mask(ckpt, ["To be or not to <mask>."])  # [[[(" be", 0.31), ...]]] per text, per <mask>
    tokens, weights = attention_weights(ckpt, "To be or not to be.")   # float32 [layers, heads, L, L]
    nearest_tokens(ckpt, "king")                  # [(" queen", 0.62), ...] by cosine similarity

    rows = pack_texts(ckpt.tokenizer, ["First document.", "Second one."], max_seq_length=16)
    document_index(rows, ckpt.tokenizer.eos_token_id)      # which document each cell holds
    mask_rows(ckpt.tokenizer, rows.input_ids, step=3)      # the dynamic mask a step draws

Everything runs eagerly in float32 on the default device; it is meant for small inputs.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from roberta_jax import storage
from roberta_jax.data.fast_tokenizer import FastTokenizer
from roberta_jax.data.packing import PackedRows, pack_documents
from roberta_jax.data.tokenizer import load_tokenizer
from roberta_jax.model import hf_io
from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.tools.views import MASKED, NOT_CHOSEN, PADDING, RANDOM, SPECIAL, UNCHANGED
from roberta_jax.train import checkpoint, masking
from roberta_jax.train import workdir as workdir_files


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A masked LM ready to apply: `model.apply({"params": params}, input_ids)`."""

    model: RobertaForMaskedLM
    params: Any
    tokenizer: FastTokenizer
    path: str
    kind: str  # "orbax" (a pretraining workdir) or "hf" (an HF directory)
    step: int | None  # the checkpoint's step; None for an HF directory


def load_checkpoint(path: str, step: int | None = None) -> Checkpoint:
    """Loads a pretraining workdir (`train.py --workdir`; newest checkpoint unless `step`) or an
    HF directory (`config.json` + `model.safetensors` + tokenizer files) as a masked LM; local or `gs://`."""
    path = storage.resolve(path)
    if workdir_files.is_pretraining_workdir(path):
        params, step = checkpoint.load_params(path, step)
        model = RobertaForMaskedLM(RobertaConfig.from_json_file(storage.join(path, workdir_files.MODEL_CONFIG)))
        return Checkpoint(model, params, load_tokenizer(workdir_files.tokenizer_dir(path)), path,
                          "orbax", step)
    if storage.isfile(storage.join(path, "config.json")):
        params, model, report = hf_io.load_hf(path, RobertaForMaskedLM)
        if report.missing:
            warnings.warn(f"{path}: weights missing from the checkpoint were initialised at random: {report}",
                          stacklevel=2)
        return Checkpoint(model, params, load_tokenizer(path), path, "hf", None)
    storage.check_access(path)
    storage.check_whole(path)  # an export stopped before its config.json
    raise FileNotFoundError(
        f"{path} is neither a pretraining workdir (no {workdir_files.MODEL_CONFIG}) nor an HF directory "
        "(no config.json)."
    )


def token_strings(tokenizer: FastTokenizer, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (" king", "<s>"); a piece of a multi-byte character shows as U+FFFD."""
    return [tokenizer.decode([int(i)]) for i in ids]


def token_table(tokenizer: FastTokenizer, text: str) -> list[tuple[str, int]]:
    """(token, id) of `text` with `<s>`/`</s>`; "Ġ" (byte-level BPE) or "▁" (SentencePiece) is a leading space."""
    encoding = tokenizer(text)
    return list(zip(encoding.encodings[0].tokens, encoding["input_ids"]))


def max_tokens(ckpt: Checkpoint) -> int:
    """The longest input the model takes: positions start after the padding id (514 → 512)."""
    c = ckpt.model.config
    return c.max_position_embeddings - c.pad_token_id - 1


def fill_mask(ckpt: Checkpoint, texts: Sequence[str], top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each `<mask>` in it (left to right), the `top_k` (token, probability).
    Texts are cut to `max_tokens(ckpt)`."""
    batch = ckpt.tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens(ckpt),
                           return_tensors="np")
    # One compiled program runs faster than the model's ops one by one, even for a single call.
    probs = jax.jit(lambda p, ids, mask: jax.nn.softmax(ckpt.model.apply({"params": p}, ids, mask), axis=-1))(
        ckpt.params, batch["input_ids"], batch["attention_mask"])
    probs = np.asarray(probs)
    out = []
    for ids, p in zip(batch["input_ids"], probs):
        positions = np.flatnonzero(ids == ckpt.tokenizer.mask_token_id)
        if not len(positions):
            raise ValueError(f"no <mask> in the first {len(ids)} tokens of "
                             f"{ckpt.tokenizer.decode(ids, skip_special_tokens=True)!r}")
        out.append([_top(ckpt.tokenizer, p[i], top_k) for i in positions])
    return out


def _top(tokenizer: FastTokenizer, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    best = np.argsort(-scores)[:k]
    return list(zip(token_strings(tokenizer, best), scores[best].tolist()))


def attention_weights(ckpt: Checkpoint, text: str) -> tuple[list[str], np.ndarray]:
    """The tokens of `text` (cut to `max_tokens(ckpt)`) and every layer's attention probabilities,
    float32 [layers, heads, L, L] (row = query token, column = attended token)."""
    ids = ckpt.tokenizer(text, truncation=True, max_length=max_tokens(ckpt), return_tensors="np")["input_ids"]
    apply = jax.jit(lambda p, x: ckpt.model.apply({"params": p}, x, mutable=["intermediates"]))
    _, state = apply(ckpt.params, ids[None])
    found = {}
    for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
        layer = next((int(m.group(1)) for p in path if (m := re.fullmatch(r"layer_(\d+)", p))), None)
        if path[-1] == "attention_weights" and layer is not None:
            found[layer] = np.asarray(value[0])[0]  # sow keeps a tuple; drop the batch axis
    return token_strings(ckpt.tokenizer, ids), np.stack([found[i] for i in sorted(found)])


def word_embeddings(ckpt: Checkpoint) -> np.ndarray:
    """The input (and tied output) token embeddings, float32 [vocab, hidden]."""
    return np.asarray(ckpt.params["roberta"]["embeddings"]["word_embeddings"]["embedding"])


def nearest_tokens(ckpt: Checkpoint, word: str, k: int = 8) -> list[tuple[str, float]]:
    """The `k` tokens whose embeddings have the highest cosine similarity to `word`'s.

    `word` is encoded as it appears mid-sentence (after a space); a word of several tokens is
    represented by their mean embedding. The word's own tokens and special tokens are left out.
    """
    tok = ckpt.tokenizer
    query_ids = tok([word], add_special_tokens=False, add_prefix_space=True)["input_ids"][0]
    table = word_embeddings(ckpt)
    unit = table / np.maximum(np.linalg.norm(table, axis=-1, keepdims=True), 1e-12)
    query = table[query_ids].mean(axis=0)
    scores = unit @ (query / max(np.linalg.norm(query), 1e-12))
    # Only real tokens compete: not the word's own, not special ones, not ids no token has.
    allowed = np.zeros(len(table), bool)
    allowed[[i for i in tok.get_vocab().values() if i < len(table)]] = True
    allowed[[*query_ids, *tok.all_special_ids]] = False
    return _top(tok, np.where(allowed, scores, -np.inf), k)


def pack_texts(tokenizer: FastTokenizer, texts: Sequence[str], max_seq_length: int) -> PackedRows:
    """Documents → FULL-SENTENCES rows exactly as pretraining packs them, the tail kept (padded)."""
    ids = [np.asarray(x, np.int32) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    return pack_documents(
        np.concatenate(ids), offsets, max_seq_length=max_seq_length, bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, drop_remainder=False,
    )


def document_index(rows: PackedRows, eos_id: int) -> np.ndarray:
    """int32 [num_rows, L]: the number of the document each cell holds; `SPECIAL` for `<s>`, the
    row-final `</s>` and the `</s>` between documents, `PADDING` for padding."""
    ids = np.asarray(rows.input_ids)
    out = np.full(ids.shape, SPECIAL, np.int32)
    content = ids[:, 1:-1].reshape(-1)
    real = content.size - (rows.max_seq_length - rows.last_row_length)
    stream = content[:real]
    docs = np.cumsum(stream == eos_id) - (stream == eos_id)
    flat = np.full(content.size, PADDING, np.int32)
    flat[:real] = np.where(stream == eos_id, SPECIAL, docs)
    out[:, 1:-1] = flat.reshape(len(ids), -1)
    if rows.has_padding:
        out[-1, rows.last_row_length - 1] = SPECIAL
        out[-1, rows.last_row_length:] = PADDING
    return out


def mask_rows(
    tokenizer: FastTokenizer, input_ids: np.ndarray, step: int, seed: int = 0, **masking_kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The dynamic mask step `step` draws for `input_ids` int [rows, L] (key `masked_rng(seed, step)`).

    Returns the corrupted ids int32 [rows, L] and what happened to each token, int8 [rows, L]:
    `NOT_CHOSEN`, `MASKED` (→ `<mask>`), `RANDOM` (→ a random token) or `UNCHANGED` (chosen,
    left as is). `masking_kwargs` go to `masking.mask_tokens` (`mlm_probability`, ...).
    """
    ids = np.asarray(input_ids, np.int32)
    out = masking.mask_tokens(
        masking.masked_rng(seed, step), ids, mask_token_id=tokenizer.mask_token_id,
        vocab_size=tokenizer.vocab_size, special_ids=tokenizer.all_special_ids, **masking_kwargs,
    )
    corrupted = np.asarray(out.input_ids)
    kind = np.full(ids.shape, NOT_CHOSEN, np.int8)
    rows, cols = np.nonzero(np.asarray(out.weights) > 0)
    positions = np.asarray(out.positions)[rows, cols]
    new = corrupted[rows, positions]
    kind[rows, positions] = np.where(
        new == tokenizer.mask_token_id, MASKED, np.where(new == ids[rows, positions], UNCHANGED, RANDOM)
    )
    return corrupted, kind
