"""`data.sources`: the fields of a source (`add_source`), the checks that name the source and the field, the
mixture directory a source reads from `data.prepared`, and the single-source config left as it was."""

import re

import ml_collections
import pytest

from configs import mixture
from roberta_jax.data import shards
from roberta_jax.train import pretrain, validate
from roberta_jax.train.config import SOURCE_FIELDS, add_source, default_config, prepared_directory


def mixed(**more):
    c = default_config()
    c.data.train_files = ""
    c.batch_size, c.total_steps = 8, 10
    c.model.max_position_embeddings, c.data.max_seq_length = 34, 32
    add_source(c, "books", train_files="books.txt", weight=0.7)
    add_source(c, "wiki", train_files="wiki.txt", weight=0.3, **more)
    return c


def refused(c, key: str, words: str) -> str:
    with pytest.raises(validate.ConfigError, match=re.escape(words)) as err:
        validate.pretraining(c, num_devices=1, num_hosts=1)
    assert err.value.key == key and "\n" not in str(err.value)
    return str(err.value)


def test_a_good_mixture_passes_and_an_empty_one_is_the_single_source_config():
    validate.pretraining(mixed(), num_devices=1, num_hosts=1)
    c = default_config()
    assert dict(c.data.sources) == {} and prepared_directory(c) == ""
    c.data.train_files = ""
    refused(c, "data.train_files", "no training data")


def test_add_source_names_the_nearest_field():
    with pytest.raises(ValueError, match=r"data.sources.wiki: unknown field 'wieght'; did you mean 'weight'\?"):
        add_source(default_config(), "wiki", wieght=0.5)
    c = add_source(default_config(), "wiki", train_files="w.txt")
    assert dict(c.data.sources.wiki) == {**SOURCE_FIELDS, "train_files": "w.txt"}


@pytest.mark.parametrize("change, key, words", [
    (dict(weight=0.0), "data.sources.wiki.weight", "a source's weight must be a positive number"),
    (dict(weight=-1.0), "data.sources.wiki.weight", "a source's weight must be a positive number"),
    (dict(weight=float("nan")), "data.sources.wiki.weight", "a source's weight must be a positive number"),
    (dict(train_files=""), "data.sources.wiki.train_files", "the source has no training text"),
    (dict(prepared="/data/wiki"), "data.sources.wiki.prepared", "the source also names train_files ('wiki.txt')"),
])
def test_a_bad_source_field_is_named_with_its_source(change, key, words):
    c = mixed()
    c.data.sources.wiki.update(change)
    message = refused(c, key, words)
    assert message.startswith(f"--config.{key}=")


def test_a_misspelt_source_field_names_the_nearest_one():
    c = mixed()
    c.data.sources.news = ml_collections.ConfigDict({**SOURCE_FIELDS, "train_files": "n.txt", "wieght": 2.0})
    refused(c, "data.sources.news.wieght", "did you mean 'weight'?")
    c.data.sources.news = ml_collections.ConfigDict({**SOURCE_FIELDS, "train_files": "n.txt", "zzz": 1})
    refused(c, "data.sources.news.zzz", "use one of train_files, eval_files, prepared")


@pytest.mark.parametrize("field, value, key, words", [
    ("train_files", "corpus.txt", "data.train_files", "data.sources (books, wiki) already names the training data"),
    ("eval_files", "held.txt", "data.eval_files", "a mixture evaluates each source apart"),
])
def test_single_source_fields_beside_sources_are_refused(field, value, key, words):
    c = mixed()
    c.data[field] = value
    refused(c, key, words)


def test_static_masks_and_eval_fraction_beside_eval_files_are_refused():
    c = mixed()
    c.masking.static_copies = 2
    refused(c, "masking.static_copies", "a mixture's rows come from several sources")
    c = mixed(eval_files="wiki-held-out.txt")
    c.data.eval_fraction = 0.1
    refused(c, "data.eval_fraction", "data.sources.wiki.eval_files already holds that source's evaluation text")


def test_a_source_reads_its_directory_of_a_prepared_mixture(tmp_path):
    c = mixed()
    c.data.sources.wiki.train_files = c.data.sources.books.train_files = ""
    c.data.prepared = str(tmp_path)
    validate.pretraining(c, num_devices=1, num_hosts=1)
    with pytest.raises(FileNotFoundError, match="no mixture.json; not a prepared mixture"):
        pretrain.mixture_sources(c)
    manifest = {"tokenizer": "f" * 64, "max_seq_length": 32,
                "splits": {"train": {"documents": 3, "rows": 5, "tokens": 150}}}
    mix = shards.write_mixture_manifest(str(tmp_path), {"books": manifest, "wikis": manifest}, {"books": 1, "wikis": 2})
    assert mix["sources"]["wikis"] == {"directory": "wikis", "weight": 2,
                                       "splits": {"train": {"documents": 3, "rows": 5, "tokens": 150}}}
    with pytest.raises(ValueError, match="data.sources.wiki: the mixture in data.prepared=.* has no source 'wiki'; "
                                         "did you mean 'wikis'\\?; it has books, wikis"):
        pretrain.mixture_sources(c)
    c.data.sources.wiki.prepared = "/elsewhere/wiki"  # a directory of its own wins
    assert pretrain.mixture_sources(c)["books"]["prepared"] == str(tmp_path / "books")
    assert pretrain.mixture_sources(c)["wiki"]["prepared"] == "/elsewhere/wiki"
    with pytest.raises(ValueError, match="is a mixture of the sources books, wikis"):
        shards.read_manifest(tmp_path)


def test_the_mixture_config_reads_a_directory_of_sources(tmp_path):
    for name in mixture.SOURCES:
        (tmp_path / f"{name}.txt").write_text("a b\n")
    (tmp_path / "wiki.eval.txt").write_text("c d\n")
    c = mixture.get_config(str(tmp_path))
    assert {n: s.weight for n, s in c.data.sources.items()} == {"shakespeare": 0.5, "stories": 0.3, "wiki": 0.2}
    assert c.data.sources.wiki.eval_files == str(tmp_path / "wiki.eval.txt") and c.data.eval_fraction == 0
    assert c.data.sources.stories.eval_files == ""
    validate.pretraining(c, num_devices=1, num_hosts=1)
