"""A run's scalars read back, from a local or `gs://` run: TensorBoard event files, or the run's
`metrics.jsonl` (through `metrics.read_metrics`, whatever its layout) where there are none.

    scalars = read_scalars("runs/tiny")          # {"train/loss": (steps, values), "eval/loss": ...}
    steps, loss = scalars["eval/loss"]           # int64 [n], float64 [n], ascending steps

Event files are TFRecord files of `Event` protos: each record is
`uint64 length | uint32 masked crc32c(length) | payload | uint32 masked crc32c(payload)`.
They are parsed here with the protos that ship with tensorboardX (already a dependency, as the
writer), so neither TensorFlow nor `tensorboard` is needed. Every `events.out.tfevents.*` file
of the directory is read in name (= creation time) order; a resumed run writes a new file, and
the later value of a step wins, as in `metrics.read_metrics`. A file that starts with a purge
(`SummaryWriter(purge_step=P)`, a resumed run's) drops the earlier files' steps from P on, as
TensorBoard does. A record cut short by a writer
that is still running (or was killed) ends that file's reading; earlier records are kept.
"""

from __future__ import annotations

import struct

import numpy as np
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from roberta_jax import storage
from roberta_jax.train import metrics

EVENTS_GLOB = "events.out.tfevents.*"

Scalars = dict[str, tuple[np.ndarray, np.ndarray]]


def event_files(logdir: str) -> list[str]:
    """The TensorBoard event files directly in `logdir`, oldest first."""
    return sorted(storage.glob_files(storage.join(logdir, EVENTS_GLOB)), key=storage.name)


def has_logs(logdir: str) -> bool:
    """Whether `logdir` holds event files or metrics (`metrics.read_metrics`)."""
    return bool(event_files(logdir)) or _metrics(logdir) is not None


def _metrics(logdir: str) -> dict[int, dict[str, float]] | None:
    """`metrics.read_metrics(logdir)`; None where there is no metrics file."""
    try:
        return metrics.read_metrics(logdir)
    except FileNotFoundError:
        return None


def find_logdir(path: str) -> str | None:
    """`path` if it holds logs, else its parent if that does (an HF export in `WORKDIR/hf`), else None."""
    path = storage.resolve(path)
    return next((d for d in (path, storage.parent(path)) if has_logs(d)), None)


def read_records(path: str) -> list[bytes]:
    """The payloads of a TFRecord file, up to the first incomplete or corrupt record."""
    records = []
    with storage.open_file(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                break
            payload, footer = f.read(length), f.read(4)
            if len(footer) < 4 or struct.unpack("<I", footer)[0] != masked_crc32c(payload):
                break
            records.append(payload)
    return records


def purge_step(path: str) -> int | None:
    """The step P of a purge event at the start of an event file (earlier files' steps >= P are void)."""
    for record in read_records(path)[:3]:  # after the file-version event
        event = Event.FromString(record)
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            return event.step
    return None


def read_event_scalars(path: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalar summaries in one event file."""
    out: dict[str, dict[int, float]] = {}
    for record in read_records(path):
        event = Event.FromString(record)
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            scalar = _scalar(value)
            if scalar is not None:
                out.setdefault(value.tag, {})[event.step] = scalar
    return out


def _scalar(value) -> float | None:
    """The number in a `Summary.Value`: `simple_value` (tensorboardX) or a one-element tensor
    (`tf.summary` v2)."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":
        numbers = list(value.tensor.float_val) or list(value.tensor.double_val)
        if len(numbers) == 1:
            return float(numbers[0])
    return None


def read_scalars(logdir: str, source: str = "auto") -> Scalars:
    """Every scalar series of a run as {tag: (steps int64 [n], values float64 [n])}, steps ascending.

    `source`: "events" (TensorBoard files; train metrics every `log_every_steps`), "jsonl"
    (`metrics.jsonl`, read by `metrics.read_metrics`; every step), or "auto": events where there are any, else
    metrics.jsonl.
    """
    if source not in ("auto", "events", "jsonl"):
        raise ValueError(f"source={source!r}; use 'auto', 'events' or 'jsonl'.")
    files = event_files(logdir)
    if source == "events" or (source == "auto" and files):
        if not files:
            raise FileNotFoundError(f"no {EVENTS_GLOB} files in {logdir}")
        merged: dict[str, dict[int, float]] = {}
        for path in files:
            purge = purge_step(path)
            if purge is not None:
                merged = {tag: {s: v for s, v in series.items() if s < purge} for tag, series in merged.items()}
            for tag, series in read_event_scalars(path).items():
                merged.setdefault(tag, {}).update(series)
    else:
        records = _metrics(logdir)
        if records is None:
            raise FileNotFoundError(f"no {EVENTS_GLOB} files and no metrics.jsonl in {logdir}")
        merged = {}
        for step, record in records.items():
            for tag, value in record.items():
                merged.setdefault(tag, {})[step] = value
    return {
        tag: (np.array(sorted(series), np.int64), np.array([series[s] for s in sorted(series)], np.float64))
        for tag, series in sorted(merged.items())
    }
