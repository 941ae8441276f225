"""The path layer (`roberta_jax.storage`) on local disk and on a GCS emulator: whole-or-nothing writes,
create-if-absent, directories written file by file, local copies, and the errors that name the path."""

import json
import os
import sys
import time

import pytest

from roberta_jax import storage


def test_resolve_keeps_urls_and_refuses_one_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("runs/x") == str(tmp_path / "runs" / "x")
    with pytest.raises(storage.StorageError, match="two slashes"):
        storage.resolve("gs:/bkt/run")
    with pytest.raises(storage.StorageError, match="s3: paths are not supported"):
        storage.resolve("s3://bkt/run")
    assert not any(p.name.startswith("gs:") for p in tmp_path.rglob("*"))


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    """A directory on local disk, or in a new bucket of the emulator."""
    if request.param == "local":
        return str(tmp_path)
    return f"{request.getfixturevalue('bucket')}/dir"


def test_write_read_list_remove(root):
    storage.makedirs(root)
    storage.write_json(storage.join(root, "a.json"), {"x": [1, 2]})
    storage.write_text(storage.join(root, "b.txt"), "héllo")
    assert storage.read_json(storage.join(root, "a.json")) == {"x": [1, 2]}
    assert storage.read_text(storage.join(root, "b.txt")) == "héllo"
    assert storage.size(storage.join(root, "b.txt")) == len("héllo".encode())
    assert storage.listdir(root) == ["a.json", "b.txt"]
    assert storage.glob_files(storage.join(root, "*.txt")) == [storage.join(root, "b.txt")]
    assert storage.read_json(storage.join(root, "missing.json")) is None
    storage.remove(storage.join(root, "a.json"))
    storage.remove(storage.join(root, "a.json"))  # gone already: nothing
    assert storage.listdir(root) == ["b.txt"]


def test_create_exclusive_takes_once(root):
    storage.makedirs(root)
    lock = storage.join(root, "run.lock")
    assert storage.create_exclusive(lock, b"first")
    assert not storage.create_exclusive(lock, b"second")
    assert storage.read_text(lock) == "first"
    storage.remove(lock)
    assert storage.create_exclusive(lock, b"third")


def test_put_dir_replaces_and_marks_while_writing(root, tmp_path):
    dest = storage.join(root, "hf")
    for version in ("old", "new"):
        local = tmp_path / f"export-{version}"
        local.mkdir()
        (local / "config.json").write_text(json.dumps({"v": version}))
        (local / "model.safetensors").write_bytes(version.encode() * 100)
        storage.put_dir(str(local), dest)
        storage.check_whole(dest)
        assert storage.listdir(dest) == ["config.json", "model.safetensors"]
        assert storage.read_json(storage.join(dest, "config.json")) == {"v": version}
    assert not storage.exists(f"{dest}.partial")
    with storage.local_copy(dest) as copy:
        assert sorted(os.listdir(copy)) == ["config.json", "model.safetensors"]
        assert open(os.path.join(copy, "model.safetensors"), "rb").read() == b"new" * 100
    # A writer stopped between its first and last file leaves the marker: readers refuse it, naming it.
    storage.write_bytes(storage.join(dest, storage.INCOMPLETE), b"")
    with pytest.raises(storage.StorageError, match=f"{dest} is half-written"):
        storage.check_whole(dest)


def test_append_is_refused_on_object_storage(bucket):
    with pytest.raises(storage.StorageError, match="no append"):
        storage.open_file(f"{bucket}/metrics.jsonl", "a")


def test_missing_bucket_is_named(gcs):
    with pytest.raises(storage.StorageError, match="gs://no-such-bucket-x/run: bucket gs://no-such-bucket-x does"):
        storage.check_access("gs://no-such-bucket-x/run")


# -- inputs: listings, versions, local stand-ins -------------------------------------------------------------


def test_find_and_glob_files_list_files_without_hidden_ones(root):
    for name in ("a.txt", "sub/b.txt", "sub/deep/c.txt", "x.json", ".hidden.txt", ".git/d.txt", "sub/.e.txt"):
        storage.makedirs(storage.parent(storage.join(root, name)))
        storage.write_text(storage.join(root, name), name)
    in_root = lambda *names: [storage.join(root, n) for n in names]  # noqa: E731
    assert storage.find(root) == in_root("a.txt", "sub/b.txt", "sub/deep/c.txt", "x.json")
    assert storage.file_sizes(root) == dict(zip(in_root("a.txt", "sub/b.txt", "sub/deep/c.txt", "x.json"),
                                                (5, 9, 14, 6)))
    assert storage.glob_files(storage.join(root, "*.txt")) == in_root("a.txt")
    assert storage.glob_files(storage.join(root, "**", "*.txt")) == in_root("a.txt", "sub/b.txt", "sub/deep/c.txt")
    assert storage.glob_files(storage.join(root, "su*")) == []  # a directory is no file
    assert storage.glob_files(storage.join(root, ".hidden*")) == in_root(".hidden.txt")  # asked for by name


def test_file_info_names_each_version(root):
    storage.makedirs(root)
    path = storage.join(root, "f.txt")
    storage.write_text(path, "one")
    first = storage.file_info(path)
    assert first.size == 3 and storage.file_info(path) == first
    time.sleep(0.01)
    storage.write_text(path, "two")  # same size, another version (mtime locally, generation on gs://)
    second = storage.file_info(path)
    assert second.size == 3 and second.version != first.version


def test_local_dir_fills_dest_marked_until_its_last_file(root):
    dest = storage.join(root, "tok")
    storage.makedirs(dest)
    storage.write_text(storage.join(dest, "other.txt"), "kept")
    with storage.local_dir(dest) as local:
        assert storage.exists(storage.join(dest, storage.INCOMPLETE))
        with open(os.path.join(local, "vocab.json"), "w") as f:
            f.write("{}")
    storage.check_whole(dest)
    assert storage.listdir(dest) == ["other.txt", "vocab.json"]
    assert storage.read_text(storage.join(dest, "vocab.json")) == "{}"
    with pytest.raises(RuntimeError), storage.local_dir(dest):
        raise RuntimeError("the writer failed")
    with pytest.raises(storage.StorageError, match=f"{dest} is half-written"):
        storage.check_whole(dest)


def test_local_path_is_the_path_only_on_local_disk(tmp_path):
    assert storage.local_path(str(tmp_path)) == str(tmp_path)
    assert storage.local_path("gs://bkt/x.npy") is None


def test_a_missing_remote_file_or_bucket_is_named(bucket):
    with pytest.raises(FileNotFoundError, match=f"^{bucket}/no.txt: no such file$"):
        with storage.naming_missing(f"{bucket}/no.txt"):
            storage.read_text(f"{bucket}/no.txt")
    with pytest.raises(storage.StorageError, match="gs://no-such-bucket-y/x: bucket gs://no-such-bucket-y does not"):
        with storage.naming_missing("gs://no-such-bucket-y/x"):
            storage.read_text("gs://no-such-bucket-y/x")


def test_gs_without_the_gcs_libraries_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # import gcsfs raises ImportError
    storage.require_gcs.cache_clear()
    try:
        with pytest.raises(storage.StorageError, match=r"gs://bkt/run: .*gcsfs is missing.*roberta_jax\[gcs\]"):
            storage.resolve("gs://bkt/run")
    finally:
        storage.require_gcs.cache_clear()


def test_append_log_flushes_whole_objects_and_keeps_what_a_resume_keeps(root):
    """A log written in three flushes and reopened keeping lines up to "2": locally one file, on gs:// one
    object per flush; read back in order either way, nothing lost and nothing twice."""
    storage.makedirs(root)
    path = storage.join(root, "metrics.jsonl")
    log = storage.AppendLog(path)
    for batch in (["1\n", "2\n"], ["3\n"], ["4\n"]):
        for line in batch:
            log.write(line)
        log.flush()
    log.close()
    assert storage.read_lines(path) == ["1\n", "2\n", "3\n", "4\n"]
    resumed = storage.AppendLog(path, keep=lambda line: int(line) <= 2)
    resumed.write("3\n")
    resumed.close()
    assert storage.read_lines(path) == ["1\n", "2\n", "3\n"]
    parts = storage.listdir(f"{path}.d")
    assert parts == ([] if root.startswith("/") else ["00000000", "00000001"])
