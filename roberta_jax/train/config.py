"""The default pretraining config (roberta-base, the paper's recipe); `configs/*.py` adjust it.

Every field can be overridden on the command line (`--config.optimizer.peak_lr=4e-4`); an
unknown key is an error that names the nearest valid one.
"""

from __future__ import annotations

import ml_collections

from roberta_jax.model.config import PRESETS
from roberta_jax.suggest import did_you_mean


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # params init, shuffling, masking and dropout all derive from it
    c.eval_seed = 1  # fixed eval masks

    # Architecture: HF RobertaConfig fields. vocab_size 0 takes the tokenizer's size.
    c.model = ml_collections.ConfigDict(
        dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            vocab_size=0, max_position_embeddings=514, hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
        )
    )

    # Tokenizer: an HF-format directory of `kind` (roberta-base's vocab.json + merges.txt; XLM-R's or
    # CamemBERT's sentencepiece.bpe.model or tokenizer.json), or "" to train one of `kind` and `vocab_size`
    # on the training files into WORKDIR/tokenizer. kind: byte_level_bpe (RoBERTa; model_type roberta) |
    # unigram (SentencePiece, XLM-R's layout; model_type xlm-roberta). min_frequency: byte_level_bpe only.
    c.tokenizer = ml_collections.ConfigDict(dict(path="", kind="byte_level_bpe", vocab_size=50265, min_frequency=2))

    c.data = ml_collections.ConfigDict(
        dict(
            train_files="",  # comma-separated files, directories or globs; or a Hub name with format=hub
            eval_files="",
            eval_fraction=0.0,  # without eval_files: hold out this fraction of the documents
            format="auto",  # auto (by extension) | text | json (JSON lines) | parquet | hub
            text_field="text",
            doc_split="blank_line",  # text files: blank_line | file | line
            doc_separator="",  # text files: a line that separates documents (e.g. <|endoftext|>), instead of doc_split
            max_seq_length=512,
            # full_sentences: documents back to back, a row may span several (the paper's choice);
            # doc_sentences: no input crosses a document, short ones share a row without seeing each other;
            # segment_pair / sentence_pair: a row is <s> A </s></s> B </s> (runs of sentences / single ones),
            # B the true continuation half the time, and next-sentence prediction is trained beside MLM.
            input_format="full_sentences",
            # False: a packed row's documents do not attend to each other (segment ids, block-diagonal
            # attention, positions restarting per document); True: the paper's FULL-SENTENCES rows.
            cross_document_attention=True,
            num_proc=1,  # tokenizer processes
            cache_dir="",  # "" = WORKDIR/data_cache
            # a directory (local or gs://) of `python -m roberta_jax.tools.prepare`: train from its shards
            # instead of tokenizing train_files/eval_files in every process
            prepared="",
            read_ahead=4,  # prepared data: batches gathered ahead in background threads
            # A weighted mixture of named corpora (`add_source`; fields SOURCE_FIELDS): each batch slot draws
            # its source by weight, each source walks its own rows (`data.mixture`). Empty: the fields above.
            sources=ml_collections.ConfigDict(),
        )
    )
    # Which tokens: single tokens (default), whole_word (every piece of a word together) or span (SpanBERT:
    # geometric(span_p) whole words clipped at span_max_words), each at mlm_probability of the tokens.
    # static_copies N > 0: each row's N fixed masks cycled over epochs (the paper's static masking); 0: a
    # fresh mask every step. A chosen token becomes <mask> / a random token / itself at 80/10/10.
    c.masking = ml_collections.ConfigDict(
        dict(mlm_probability=0.15, mask_ratio=0.8, random_ratio=0.1, whole_word=False, span=False, span_p=0.2,
             span_max_words=10, static_copies=0)
    )

    c.batch_size = 8192  # global sequences per step (the paper's 8k)
    c.grad_accum_steps = 1  # microbatches per step; batch_size must divide by it
    c.total_steps = 500_000
    c.optimizer = ml_collections.ConfigDict(
        dict(
            peak_lr=6e-4, warmup_steps=24_000, total_steps=c.get_ref("total_steps"), end_lr=0.0,
            b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip_norm=0.0,
            schedule="linear",  # decay after warmup: linear | polynomial (fairseq's, of `power`, to end_lr)
            power=1.0,
        )
    )

    c.log_every_steps = 100  # TensorBoard cadence; metrics.jsonl gets every step
    c.eval_every_steps = 5000
    c.eval_batches = 50  # at most this many eval batches (of batch_size / grad_accum_steps rows) per evaluation
    c.export_hf = True  # write WORKDIR/hf (model.safetensors, config.json, tokenizer) at the end
    # Downstream probes: every `every_steps` steps (and at the last), each task of `tasks` (added with
    # `probe_task`) is fine-tuned from a copy of the current params and scored on its dev file, logged as
    # downstream/<name>/<metric>; the pretraining run itself is unchanged. 0 = no probes.
    c.probes = ml_collections.ConfigDict(dict(every_steps=0, tasks=ml_collections.ConfigDict()))
    return add_runtime_fields(c, checkpoint_keep=3)


# The fields of one `data.sources` entry: where its text is and how it splits into documents, as the single-source
# `data` fields of the same names, plus its `weight` (relative; the weights need not sum to 1).
SOURCE_FIELDS = dict(
    train_files="",  # comma-separated files, directories or globs
    eval_files="",  # this source's held-out text, evaluated and logged as eval/<name>/...
    prepared="",  # a prepared directory of this source alone (`tools.prepare`), instead of train_files/eval_files
    format="auto", text_field="text", doc_split="blank_line", doc_separator="",
    weight=1.0,
)


def add_source(c: ml_collections.ConfigDict, name: str, **fields) -> ml_collections.ConfigDict:
    """Adds source `name` to `c.data.sources`: `SOURCE_FIELDS` with `fields` set; an unknown field is an error
    naming the nearest one. Returns `c`."""
    for key in fields:
        if key not in SOURCE_FIELDS:
            raise ValueError(f"data.sources.{name}: unknown field {key!r}{did_you_mean(key, SOURCE_FIELDS)}")
    c.data.sources[name] = ml_collections.ConfigDict({**SOURCE_FIELDS, **fields})
    return c


def prepared_directory(c: ml_collections.ConfigDict) -> str:
    """The prepared directory whose tokenizer the run uses: `data.prepared` (one source's, or a mixture's), else
    the first source (by name) with a `prepared` directory of its own; "" when the data is not prepared."""
    named = [c.data.sources[name].prepared for name in sorted(c.data.sources) if c.data.sources[name].prepared]
    return c.data.prepared or (named[0] if named else "")


# The fields of one probe (`probe_task`) and their defaults. mode: finetune (the whole model) | linear (the
# task head on frozen features). seed: the head's init, the probe's data order and dropout.
PROBE_FIELDS = dict(task="classification", train_file="", eval_file="", steps=100, mode="finetune", lr=1e-4,
                    batch_size=32, max_seq_length=128, seed=0)
PROBE_MODES = ("finetune", "linear")


def probe_task(c: ml_collections.ConfigDict, name: str, **fields) -> ml_collections.ConfigDict:
    """Adds the probe `name` to `c.probes.tasks`: `PROBE_FIELDS` with `fields` in place of their defaults, e.g.
    `probe_task(c, "sst2", train_file=..., eval_file=..., steps=200, mode="linear", lr=1e-3)`. An unknown field is
    an error naming the nearest valid one."""
    for key in fields:
        if key not in PROBE_FIELDS:
            hint = did_you_mean(key, PROBE_FIELDS) or f"; the fields are {', '.join(PROBE_FIELDS)}"
            raise ValueError(f"probe_task({name!r}): unknown field {key!r}{hint}")
    c.probes.tasks[name] = ml_collections.ConfigDict({**PROBE_FIELDS, **fields})
    return c


def add_runtime_fields(c: ml_collections.ConfigDict, checkpoint_keep: int) -> ml_collections.ConfigDict:
    """The fields `train.runtime.Runtime` reads, the same for pretraining and fine-tuning configs."""
    c.dtype = "bfloat16"  # compute dtype; params and optimizer state stay float32
    # "": a fused kernel where one applies (splash on TPU, cuDNN on GPU), else XLA; or force splash | cudnn | xla
    c.attention_implementation = ""
    # What each layer keeps for its backward pass: none (everything) | full (its input only; ~1/3 more
    # compute) | dots (the projections' outputs) | offload (those, in host memory). `model.layers.REMAT_POLICIES`.
    c.remat = "none"

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # one axis may be -1 (the rest)
    # Logical axis of the layers -> mesh axes (a tuple: split over all of them; None: replicated). An axis
    # already used by an earlier dimension of the same array is skipped, so activations [batch, length,
    # embed] split batch over (data, fsdp) and keep embed whole, while a kernel [embed, mlp] splits embed
    # over fsdp. `tensor` splits heads, the FFN and the vocabulary.
    c.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("embed", "fsdp"),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
    )
    # every_steps: the interval (the last step and a SIGTERM's step are saved too); keep: the newest N.
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=checkpoint_keep, asynchronous=True))
    c.max_nonfinite_steps = 10  # consecutive skipped (non-finite) updates before the run stops
    c.progress = True  # the one-line progress display
    # Compiled programs kept across runs, so a restart skips compiling: "" = ~/.cache/roberta_jax/
    # jax_compilation_cache on each host (or $JAX_COMPILATION_CACHE_DIR), a local path or gs://bucket/path
    # (shared by the hosts; survives VMs replaced on preemption), or "none". `train.compilation_cache`.
    c.compilation_cache_dir = ""

    # Multi-host: jax.distributed.initialize(); empty fields are auto-detected (TPU pods, SLURM).
    c.distributed = ml_collections.ConfigDict(
        dict(initialize=False, coordinator_address="", num_processes=0, process_id=-1)
    )
    return c


def with_preset(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Sets the architecture fields of `c.model` from `config.PRESETS[name]`."""
    for key, value in PRESETS[name].items():
        if key in c.model:
            c.model[key] = value
    return c


def with_slice_plan(c: ml_collections.ConfigDict, plans: dict[str, tuple[int, int]], target: str):
    """Sets `c` up for one of a config's planned TPU slices: `plans` maps an accelerator type
    ("v5p-32") to (chips, rows per chip per microbatch). The parameters and optimizer state are
    sharded over every chip (FSDP), and the global batch `c.batch_size` is made of `grad_accum_steps`
    microbatches of chips x rows. An empty `target` leaves `c` as it is (one host's devices, the
    batch in one step)."""
    if not target:
        return c
    if target not in plans:
        raise ValueError(f"no plan for {target!r}{did_you_mean(target, plans)}; the planned slices: {', '.join(plans)}")
    chips, rows = plans[target]
    if c.batch_size % (chips * rows):
        raise ValueError(f"batch_size={c.batch_size} is not a whole number of {chips} chips x {rows} rows")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.grad_accum_steps = c.batch_size // (chips * rows)
    return c
