"""The path layer (`roberta_jax.storage`) on local disk and on a GCS emulator: whole-or-nothing writes,
create-if-absent, directories written file by file, local copies, and the errors that name the path."""

import json
import os

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
    assert storage.glob(storage.join(root, "*.txt")) == [storage.join(root, "b.txt")]
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
