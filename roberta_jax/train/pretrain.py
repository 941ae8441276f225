"""RoBERTa pretraining: `train_and_evaluate(config, workdir)`, the function behind `train.py`.

Reads top to bottom: the runtime (distributed setup, workdir, mesh), tokenizer, data, model and
optimizer, sharded state, compiled MLM steps, checkpoint restore, the downstream probes' callbacks,
the loop, the HF export. The same
code runs on a TPU pod, a GPU node or a laptop; the mesh shape, batch and model come from the config.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
from collections.abc import Callable, Sequence

import jax
import numpy as np

from roberta_jax import storage
from roberta_jax.data import shards
from roberta_jax.data.batches import PAIR_FORMATS, BatchIterator, PretrainingData, build_pretraining_data
from roberta_jax.data.encoders import resolve_tokenizer
from roberta_jax.data.fast_tokenizer import FastTokenizer
from roberta_jax.data.mixture import MixtureBatches
from roberta_jax.data.sources import document_texts
from roberta_jax.data.tokenizer import is_tokenizer_dir, load_tokenizer, train_tokenizer
from roberta_jax.model.config import MODEL_TYPES, RobertaConfig
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.suggest import did_you_mean
from roberta_jax.train import loop, masking, metrics, objectives, optimizer, runtime, steps, validate, word_masking
from roberta_jax.train import workdir as workdir_files
from roberta_jax.train.config import prepared_directory

log = logging.getLogger("absl")  # absl sets up the handlers


# `make_callbacks(config, rt, tokenizer, arch) -> callbacks`: the loop's interval callbacks of a run (its
# downstream probes), given its config, `runtime.Runtime`, tokenizer and architecture (`model_config`).
CallbacksFactory = Callable[..., Sequence[loop.IntervalCallback]]


def train_and_evaluate(config, workdir: str, make_callbacks: CallbacksFactory | None = None) -> dict[str, float]:
    """Runs (or resumes) pretraining in `workdir`; returns the last logged metrics. `make_callbacks` builds the
    downstream probes of `config.probes` (`train.py` passes `finetune.probe.probe_callbacks`: this layer does not
    know the fine-tuning tasks)."""
    if config.probes.every_steps and make_callbacks is None:
        raise ValueError(f"probes.every_steps={config.probes.every_steps}, but nothing builds the probes: call "
                         "train_and_evaluate(..., make_callbacks=roberta_jax.finetune.probe.probe_callbacks) "
                         "(train.py does), or set --config.probes.every_steps=0")
    with runtime.Runtime(config, workdir, workdir_files.TRAIN_CONFIG, check_config=validate.pretraining,
                         contract=workdir_files.pretraining_contract(config)) as rt:
        tokenizer = load_or_train_tokenizer(config, rt.workdir)
        train_batches, eval_sets = training_input(config, tokenizer, rt.workdir)

        arch = model_config(config, tokenizer)
        model = pretraining_model(config, arch, **rt.model_kwargs())
        if rt.is_main:
            config_json = json.dumps(arch.to_dict(), indent=2, sort_keys=True) + "\n"  # as `to_json_file` writes it
            storage.write_text(storage.join(rt.workdir, workdir_files.MODEL_CONFIG), config_json)
        tx, schedule = optimizer.make_optimizer(config.optimizer)
        state, state_shardings = rt.create_state(model, tx)
        train_step, eval_step = rt.compile(*mlm_steps(config, model, tokenizer, tx, schedule), state_shardings)
        state, _ = rt.resume(state, train_batches)
        callbacks = make_callbacks(config, rt, tokenizer, arch) if config.probes.every_steps else ()

        tokens_per_step = config.batch_size * config.data.max_seq_length
        flops_per_step = metrics.flops_per_token(arch, config.data.max_seq_length) * tokens_per_step
        try:
            result = rt.train(state, train_step, train_batches,
                              rt.loop_config(config.total_steps, tokens_per_step, flops_per_step),
                              make_evaluate(config, rt, eval_step, tokenizer, eval_sets), callbacks)
        finally:
            train_batches.close()
        if config.export_hf:
            runtime.export_hf(storage.join(rt.workdir, workdir_files.HF_EXPORT), model, result.state.params,
                              tokenizer)
    return result.last_metrics


def training_input(config, tokenizer: FastTokenizer, workdir: str) -> tuple[BatchIterator | MixtureBatches, dict]:
    """The training batches and the held-out rows by source name ("" for the single source; none without eval
    data): of `data.sources` when the config names any (`MixtureBatches`), else of the single-source fields."""
    if not config.data.sources:
        data = pretraining_data(config, tokenizer, workdir)
        return train_batch_iterator(config, tokenizer, data), ({"": data.eval} if data.eval is not None else {})
    if prepared_directory(config):
        check_prepared_config(config)
    data = source_data(config, tokenizer, workdir)
    batches = MixtureBatches({name: d.train for name, d in data.items()},
                             {name: config.data.sources[name].weight for name in data}, config.batch_size,
                             seed=config.seed, segment_separator=segment_separator(config, tokenizer),
                             read_ahead=config.data.read_ahead if prepared_directory(config) else 0)
    return batches, {name: d.eval for name, d in data.items() if d.eval is not None}


def make_evaluate(config, rt: runtime.Runtime, eval_step, tokenizer: FastTokenizer,
                  eval_sets: dict) -> Callable[[object, int], dict[str, float]] | None:
    """The evaluation of the held-out rows `eval_sets` ({source name: rows}), each in batches of one microbatch
    (an accumulated batch in one forward pass would hold grad_accum_steps times the rows a train step holds):
    eval/loss, eval/perplexity, eval/accuracy over all of them, and the same under eval/<name>/ per named source.
    None without held-out rows."""
    if not eval_sets:
        return None

    def evaluate(state, step: int) -> dict[str, float]:
        named, total = {}, {}
        for name, rows in eval_sets.items():
            batches = BatchIterator(rows, config.batch_size // config.grad_accum_steps, shuffle=False, num_epochs=1,
                                    drop_remainder=False, segment_separator=segment_separator(config, tokenizer))
            sums, _ = rt.evaluate(eval_step, state.params, batches, config.eval_batches)
            total = {k: total.get(k, 0.0) + v for k, v in sums.items()}
            if name:
                named.update(eval_metrics(sums, f"eval/{name}", step, rows.num_rows))
        return {**eval_metrics(total, "eval", step, sum(rows.num_rows for rows in eval_sets.values())), **named}

    return evaluate


def eval_metrics(sums: dict[str, float], prefix: str, step: int, num_rows: int) -> dict[str, float]:
    """{prefix/loss, prefix/perplexity, prefix/accuracy, prefix/<ratio>...} of an evaluation's summed `sums`."""
    if not sums["count"]:  # no token was masked: there is no score, not a perfect one
        log.warning("step %d: the evaluation masked no token (%d held-out rows); no %s metrics. Hold out "
                    "more data (data.eval_fraction, data.eval_files)", step, num_rows, prefix)
        return {}
    # With next-sentence prediction, eval/loss stays MLM's (comparable across input formats); NSP's apart.
    ratios = steps.ratio_metrics(sums, prefix)
    loss = ratios.pop(f"{prefix}/mlm_loss", sums["loss_sum"] / sums["count"])
    return {f"{prefix}/loss": loss, f"{prefix}/perplexity": float(np.exp(loss)),
            f"{prefix}/accuracy": sums["correct"] / sums["count"], **ratios}


def pretraining_model(config, arch: RobertaConfig, **kwargs) -> RobertaForMaskedLM:
    """The MLM model of `arch`; the pair formats train next-sentence prediction beside MLM, and only they
    have its head. `kwargs`: the module attributes beside the architecture (`runtime.model_kwargs`)."""
    return RobertaForMaskedLM(arch, next_sentence=config.data.input_format in PAIR_FORMATS, **kwargs)


def train_batch_iterator(config, tokenizer: FastTokenizer, data: PretrainingData) -> BatchIterator:
    """The training batches: read ahead from prepared shards; with row ids for static masking."""
    return BatchIterator(
        data.train, config.batch_size, seed=config.seed,
        read_ahead=config.data.read_ahead if config.data.prepared else 0,
        emit_row_ids=config.masking.static_copies > 0, segment_separator=segment_separator(config, tokenizer),
    )


def segment_separator(config, tokenizer: FastTokenizer) -> int | None:
    """`</s>`, where the documents (DOC-SENTENCES: the sequences) of a row must not see each other: the
    batches then carry segment ids. Never for the pair formats: a row is one pair, A and B see each other."""
    separate = config.data.input_format == "doc_sentences" or not config.data.cross_document_attention
    return tokenizer.eos_token_id if separate else None


def mlm_steps(config, model: RobertaForMaskedLM, tokenizer: FastTokenizer, tx, schedule):
    """The uncompiled MLM (train_fn, eval_fn): dynamic (or static) masking of tokens, whole words or spans
    with the tokenizer's special ids, the loss at the masked slots only, `grad_accum_steps` microbatches;
    eval masks fixed by `eval_seed`. With the next-sentence head (the pair formats), its loss is added to MLM's
    and the NSP loss and accuracy are logged (`objectives.mlm_nsp_loss`)."""
    prepare = objectives.mlm_prepare(mask_function(config, tokenizer, model.config.vocab_size),
                                     static_copies=config.masking.static_copies, seed=config.seed)
    loss_fn = objectives.mlm_loss(model)
    if model.next_sentence:
        prepare, loss_fn = objectives.nsp_prepare(prepare), objectives.mlm_nsp_loss(model)
    train_fn = steps.make_train_step(tx, schedule, loss_fn, seed=config.seed, num_micro=config.grad_accum_steps,
                                     prepare=prepare, accuracy_name="mlm_accuracy")
    return train_fn, steps.make_eval_step(loss_fn, seed=config.eval_seed, prepare=prepare)


def mask_function(config, tokenizer: FastTokenizer, vocab_size: int):
    """`mask_fn(rng, input_ids) -> MaskedBatch` of the config's `masking` section (all but static_copies,
    which `objectives.mlm_prepare` applies) with the tokenizer's special ids and, for whole words and
    spans, its word tables."""
    options = dict(config.masking)
    static_copies = options.pop("static_copies")
    if static_copies < 0:
        raise ValueError(f"masking.static_copies={static_copies}; expected 0 (dynamic masking) or a count > 0.")
    if options["whole_word"] or options["span"]:
        if tokenizer.kind != "byte_level_bpe":
            raise ValueError(f"masking.whole_word / masking.span find word starts in byte-level BPE pieces; "
                             f"tokenizer.kind={tokenizer.kind!r} is not supported")
        options["word_tables"] = word_masking.word_tables(tokenizer.get_vocab(), vocab_size)
    return functools.partial(
        masking.mask_tokens, mask_token_id=tokenizer.mask_token_id, vocab_size=vocab_size,
        special_ids=objectives.never_masked_ids(tokenizer, vocab_size), **options,
    )


def load_or_train_tokenizer(config, workdir: str) -> FastTokenizer:
    """`tokenizer.path`, else the tokenizer of `data.prepared`, else the workdir's trained tokenizer, else one
    of `tokenizer.kind` trained now on the training files. A loaded tokenizer must be of `tokenizer.kind`."""
    kind = config.tokenizer.kind
    saved = storage.join(workdir, workdir_files.TOKENIZER)
    prepared = storage.join(prepared_directory(config), shards.TOKENIZER) if prepared_directory(config) else ""
    path = config.tokenizer.path or prepared or (saved if is_tokenizer_dir(saved) else "")
    if path:
        tok = load_tokenizer(path)
        if tok.kind != kind:
            raise ValueError(f"tokenizer.kind={kind!r}, but the tokenizer in {path} is {tok.kind!r}; set "
                             f"--config.tokenizer.kind={tok.kind} (a workdir keeps the tokenizer of its first run).")
        return tok
    # Training is deterministic, so every host trains the same tokenizer; process 0 keeps it. The documents
    # are read as the corpus reads them: the same formats, text field and document split (each source's own).
    cache_dir = data_cache_dir(config, workdir)
    texts = itertools.chain.from_iterable(
        named_errors(name, document_texts(split_list(s["train_files"]), format=s["format"], text_field=s["text_field"],
                                          doc_split=s["doc_split"], doc_separator=s["doc_separator"],
                                          cache_dir=cache_dir))
        for name, s in ({n: config.data.sources[n] for n in sorted(config.data.sources)} or {"": config.data}).items())
    tok = train_tokenizer(texts, kind, config.tokenizer.vocab_size, config.tokenizer.min_frequency)
    if jax.process_index() == 0:
        # Written aside and swapped in, so another host (or a rerun) never reads a half-written tokenizer.
        with storage.staged_dir(saved) as staging:
            tok.save(staging)
    return tok


def named_errors(name: str, texts):
    """`texts`, with a bad-input error raised while reading them named by its source (`source_errors`)."""
    with source_errors(name):
        yield from texts


@contextlib.contextmanager
def source_errors(name: str):
    """A bad-input error (ValueError, OSError) raised inside, prefixed by `data.sources.<name>: ` for a source of
    a mixture; `name` "" is the single source, whose errors name their file already."""
    try:
        yield
    except (ValueError, OSError) as err:
        if not name:
            raise
        raise ValueError(f"data.sources.{name}: {err}") from err


def data_cache_dir(config, workdir: str) -> str:
    """`data.cache_dir`, else the workdir's `data_cache/`; for a workdir on object storage a local directory
    named after it (`storage.local_cache_dir`): the cache is memory-mapped."""
    return config.data.cache_dir or storage.local_cache_dir(workdir, workdir_files.DATA_CACHE)


def pretraining_data(config, tokenizer: FastTokenizer, workdir: str) -> PretrainingData:
    """The packed training (and eval) rows of the config's `data` section, cached in `data.cache_dir`; or the
    shards of `data.prepared`, checked against the tokenizer and row length before any step."""
    d = config.data
    if d.prepared:
        check_prepared_config(config)
        return prepared_data(d.prepared, tokenizer, d.max_seq_length)
    data = build_pretraining_data(
        split_list(d.train_files), tokenizer,
        eval_sources=split_list(d.eval_files) or None, eval_fraction=d.eval_fraction, split_seed=config.seed,
        max_seq_length=d.max_seq_length, cache_dir=data_cache_dir(config, workdir),
        num_proc=d.num_proc, input_format=d.input_format, format=d.format, text_field=d.text_field,
        doc_split=d.doc_split, doc_separator=d.doc_separator,
    )
    log.info("data: %s", data.stats)
    return data


def prepared_data(directory: str, tokenizer: FastTokenizer, max_seq_length: int) -> PretrainingData:
    """The train (and eval) splits of the prepared `directory`, each host reading only its share."""
    manifest = shards.read_manifest(directory)
    shards.check_manifest(manifest, directory, resolve_tokenizer(tokenizer).fingerprint, max_seq_length)
    train = shards.ShardedRows(directory, "train", manifest)
    eval_rows = shards.ShardedRows(directory, "eval", manifest) if "eval" in manifest["splits"] else None
    log.info("data: %s prepared in %s", manifest["stats"], directory)
    return PretrainingData(train, eval_rows, manifest["stats"])


def mixture_sources(config) -> dict[str, dict]:
    """{name: its `config.SOURCE_FIELDS`} of `data.sources`, by name; a source without files or a directory of its
    own reads its directory of the mixture prepared in `data.prepared` (`shards.mixture_directories`)."""
    sources, prepared = {}, None
    for name in sorted(config.data.sources):
        source = dict(config.data.sources[name])
        if not (source["train_files"].strip() or source["prepared"]):
            if prepared is None:  # read only when a source needs it
                prepared = shards.mixture_directories(config.data.prepared) if config.data.prepared else {}
            if name not in prepared:
                raise ValueError(f"data.sources.{name}: the mixture in data.prepared={config.data.prepared} has no "
                                 f"source {name!r}{did_you_mean(name, prepared)}; it has {', '.join(prepared)}")
            source["prepared"] = prepared[name]
        sources[name] = source
    return sources


def source_data(config, tokenizer: FastTokenizer, workdir: str) -> dict[str, PretrainingData]:
    """{name: its train (and eval) rows} of each source of `data.sources`: its prepared directory, or its files
    tokenized and packed (cached); held out from its `eval_files`, else `data.eval_fraction` of its documents.
    An error names the source."""
    d = config.data
    data = {}
    for name, s in mixture_sources(config).items():
        with source_errors(name):
            if s["prepared"]:
                data[name] = prepared_data(s["prepared"], tokenizer, d.max_seq_length)
                continue
            eval_files = split_list(s["eval_files"])
            data[name] = build_pretraining_data(
                split_list(s["train_files"]), tokenizer, eval_sources=eval_files or None,
                eval_fraction=0.0 if eval_files else d.eval_fraction, split_seed=config.seed,
                max_seq_length=d.max_seq_length, cache_dir=data_cache_dir(config, workdir), num_proc=d.num_proc,
                input_format=d.input_format, format=s["format"], text_field=s["text_field"],
                doc_split=s["doc_split"], doc_separator=s["doc_separator"],
            )
        log.info("data of source %s: %s", name, data[name].stats)
    return data


def check_prepared_config(config) -> None:
    """Prepared data holds its evaluation text as files (`data.eval_files` when it was prepared)."""
    if config.data.eval_fraction:
        raise ValueError(
            f"data.eval_fraction={config.data.eval_fraction} does not apply to prepared data: hold out evaluation "
            "text with data.eval_files when preparing, and set data.eval_fraction=0."
        )


def split_list(files: str) -> list[str]:
    """A comma-separated config value as a list, blanks dropped."""
    return [f for f in (s.strip() for s in files.split(",")) if f]


def model_config(config, tokenizer: FastTokenizer) -> RobertaConfig:
    """The architecture of the config's `model` section with the tokenizer's vocabulary and special ids, and
    its model type: "roberta" for byte-level BPE, "xlm-roberta" (or "camembert") for SentencePiece."""
    fields = dict(config.model)
    # roberta-base's files leave ids 50261-50263 unused: the embedding needs the largest id + 1.
    needed = max(tokenizer.vocab_size, max(tokenizer.all_special_ids) + 1)
    vocab = fields.pop("vocab_size") or needed
    if vocab < needed:
        raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's largest id + 1 = {needed}.")
    return RobertaConfig(
        vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, model_type=tokenizer.model_type,
        architectures=(MODEL_TYPES[tokenizer.model_type] + "ForMaskedLM",), **fields,
    )
