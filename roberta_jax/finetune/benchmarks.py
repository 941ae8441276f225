"""Named downstream benchmarks: each a fine-tuning task, its files in the data set's published layout, the
config fields it needs, its headline metrics and the published RoBERTa dev scores to compare against.

    bench = get_benchmark("mnli")
    config = finetune_config(bench, "glue/MNLI")      # the default fine-tuning config, filled in for MNLI
    bench.headline                                      # ("accuracy", "mm/accuracy"): MNLI-m and MNLI-mm

A benchmark's data directory holds its files as the data set publishes them: a GLUE task's folder (`SST-2/`,
...) its `train.tsv` and `dev.tsv` (MNLI: `dev_matched.tsv`, with `dev_mismatched.tsv` scored beside it), SQuAD's
`train-v1.1.json` / `dev-v1.1.json` (v2.0: `-v2.0`), SWAG's `train.csv` / `val.csv`, CoNLL-2003's `train.txt` /
`valid.txt`. `folder` is the directory's usual name under a data root (GLUE's download script's names).
`hf_splits` writes a GLUE task or SWAG from the `datasets` hub (by name) as JSON Lines instead, whose column
names the classification task finds by itself.

Published numbers: dev set, median of five runs, from the RoBERTa paper (Liu et al. 2019, tables 5 and 6)
and fairseq's RoBERTa README (GLUE: accuracy for MRPC and QQP, Pearson for STS-B, MCC for CoLA); blank where
neither reports one (WNLI base, MNLI-mm base, SQuAD base, CoNLL, SWAG).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from roberta_jax import storage
from roberta_jax.finetune.config import default_config
from roberta_jax.suggest import did_you_mean

PUBLISHED_MODELS = ("roberta.base", "roberta.large")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    task: str  # a task of `finetune.tasks`
    folder: str  # the data directory's name under a data root
    train_file: str  # file names inside the benchmark's data directory
    eval_file: str
    headline: tuple[str, ...]  # the metrics its table shows (eval/<name>); the first selects the grid point
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # fine-tuning config fields
    extra_eval_files: dict[str, str] = dataclasses.field(default_factory=dict)  # set name -> file name
    published: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # model -> metric -> score
    hf_name: tuple[str, ...] = ()  # `datasets.load_dataset` arguments; () = files only
    hf_splits: tuple[str, ...] = ("train", "validation")  # train, eval, then each extra eval set's split

    @property
    def best_metric(self) -> str:
        return self.headline[0].rsplit("/", 1)[-1]

    @property
    def scale(self) -> float:
        """Factor from the task's metrics to the published ones' percent (qa's are percent already)."""
        return 1.0 if self.task == "qa" else 100.0


def _glue(name, folder, headline, base, large, eval_file="dev.tsv", hf=None, **overrides) -> Benchmark:
    published = {m: {headline[0]: v} for m, v in zip(PUBLISHED_MODELS, (base, large)) if v is not None}
    return Benchmark(name, "classification", folder, "train.tsv", eval_file, headline,
                     overrides, published=published, hf_name=("glue", hf or name))


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    # CoLA: no header line; columns source, label, original annotation, sentence.
    _glue("cola", "CoLA", ("matthews_correlation",), 63.6, 68.0,
          **{"data.columns": "source,label,original_label,sentence", "data.text_a": "sentence"}),
    _glue("sst2", "SST-2", ("accuracy",), 94.8, 96.4),
    _glue("mrpc", "MRPC", ("accuracy", "f1"), 90.2, 90.9,
          **{"data.text_a": "#1 String", "data.text_b": "#2 String", "data.label_column": "Quality"}),
    _glue("stsb", "STS-B", ("pearson", "spearman"), 91.2, 92.4,
          **{"data.label_column": "score", "data.regression": True}),
    _glue("qqp", "QQP", ("accuracy", "f1"), 91.9, 92.2, **{"data.label_column": "is_duplicate"}),
    _glue("qnli", "QNLI", ("accuracy",), 92.8, 94.7),
    _glue("rte", "RTE", ("accuracy",), 78.7, 86.6),
    _glue("wnli", "WNLI", ("accuracy",), None, 91.3),
    dataclasses.replace(
        _glue("mnli", "MNLI", ("accuracy", "mm/accuracy"), 87.6, 90.2, eval_file="dev_matched.tsv",
              **{"data.label_column": "gold_label"}),
        extra_eval_files={"mm": "dev_mismatched.tsv"},
        published={"roberta.base": {"accuracy": 87.6}, "roberta.large": {"accuracy": 90.2, "mm/accuracy": 90.2}},
        hf_splits=("train", "validation_matched", "validation_mismatched")),
    Benchmark("squad1", "qa", "squad", "train-v1.1.json", "dev-v1.1.json", ("f1", "exact_match"),
              {"data.max_length": 384, "data.doc_stride": 128},
              published={"roberta.large": {"exact_match": 88.9, "f1": 94.6}}),
    Benchmark("squad2", "qa", "squad", "train-v2.0.json", "dev-v2.0.json", ("f1", "exact_match"),
              {"data.max_length": 384, "data.doc_stride": 128, "data.version_2_with_negative": True},
              published={"roberta.large": {"exact_match": 86.5, "f1": 89.4}}),
    Benchmark("conll", "ner", "conll2003", "train.txt", "valid.txt", ("f1",)),
    Benchmark("swag", "multiple_choice", "swag", "train.csv", "val.csv", ("accuracy",), hf_name=("swag", "regular")),
]}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}{did_you_mean(name, BENCHMARKS)} The benchmarks are "
                         f"{sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def finetune_config(bench: Benchmark, data_dir: str, hf_files: bool = False) -> ml_collections.ConfigDict:
    """The default fine-tuning config with `bench`'s task, overrides and files under `data_dir`; with
    `hf_files`, the JSON Lines `hf_splits` wrote there (GLUE's hub columns need no column fields)."""
    c = default_config()
    c.task = bench.task
    for key, value in bench.overrides.items():
        if hf_files and key.split(".")[-1] in ("columns", "text_a", "text_b", "label_column"):
            continue
        _set(c, key, value)
    c.best_metric = bench.best_metric
    if hf_files:
        names = _hf_file_names(bench)
        c.data.train_file, c.data.eval_file = (storage.join(data_dir, n) for n in names[:2])
        extra = dict(zip(bench.extra_eval_files, names[2:]))
    else:
        c.data.train_file, c.data.eval_file = (storage.join(data_dir, f) for f in (bench.train_file, bench.eval_file))
        extra = bench.extra_eval_files
    c.data.extra_eval_files = ",".join(f"{n}={storage.join(data_dir, f)}" for n, f in extra.items())
    return c


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        config = config[part]
    config[leaf] = value


def _hf_file_names(bench: Benchmark) -> list[str]:
    return [f"{split}.jsonl" for split in bench.hf_splits]


def hf_splits(bench: Benchmark, out_dir: str, load_dataset=None) -> str:
    """Writes `bench`'s splits from the `datasets` hub (`load_dataset(*bench.hf_name)`) into `out_dir` as JSON
    Lines, once (a complete directory is kept); returns `out_dir`."""
    if not bench.hf_name:
        raise ValueError(f"benchmark {bench.name} has no `datasets` name here; pass its files (--data "
                         f"{bench.name}=DIR, in the data set's published layout)")
    names = _hf_file_names(bench)
    if all(storage.isfile(storage.join(out_dir, n)) for n in names):
        return out_dir
    if load_dataset is None:
        from datasets import load_dataset
    dataset = load_dataset(*bench.hf_name)
    storage.makedirs(out_dir)
    for split, name in zip(bench.hf_splits, names):
        local = os.path.join(out_dir, name + ".partial")  # renamed when whole: a rerun never trusts half a file
        dataset[split].to_json(local, lines=True, force_ascii=False)
        os.replace(local, os.path.join(out_dir, name))
    return out_dir
