"""Reading scalars back from TensorBoard event files and metrics.jsonl."""

import json
import os
import time

import numpy as np
import pytest
from tensorboardX import SummaryWriter
from tensorboardX.event_file_writer import EventFileWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.proto.tensor_pb2 import TensorProto

from roberta_jax.tools import events
from roberta_jax.train import metrics
from roberta_jax.train import workdir as workdir_files


def write_scalars(logdir, points, suffix=""):
    writer = SummaryWriter(str(logdir), filename_suffix=suffix)
    for tag, step, value in points:
        writer.add_scalar(tag, value, step)
    writer.close()


def test_reads_scalars_and_a_resumed_run_overrides_earlier_steps(tmp_path):
    write_scalars(tmp_path, [("train/loss", s, 10.0 - s) for s in (1, 2, 3)] + [("eval/loss", 3, 7.5)], ".a")
    write_scalars(tmp_path, [("train/loss", 3, 6.25), ("train/loss", 4, 5.5)], ".b")  # resumed at step 3
    scalars = events.read_scalars(str(tmp_path))
    steps, values = scalars["train/loss"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4])
    np.testing.assert_allclose(values, [9.0, 8.0, 6.25, 5.5])
    np.testing.assert_array_equal(scalars["eval/loss"][0], [3])
    assert scalars["eval/loss"][1][0] == 7.5


def test_a_cut_or_corrupt_record_ends_the_file_and_keeps_what_came_before(tmp_path):
    write_scalars(tmp_path, [("loss", s, float(s)) for s in range(1, 6)])
    (path,) = events.event_files(str(tmp_path))
    whole = open(path, "rb").read()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / os.path.basename(path)).write_bytes(whole[:-7])  # the last record loses its end
    np.testing.assert_array_equal(events.read_scalars(str(cut))["loss"][0], [1, 2, 3, 4])
    corrupt = bytearray(whole)
    corrupt[-6] ^= 0xFF  # a payload byte of the last record: its checksum no longer matches
    (cut / os.path.basename(path)).write_bytes(bytes(corrupt))
    np.testing.assert_array_equal(events.read_scalars(str(cut))["loss"][0], [1, 2, 3, 4])


def test_tensor_scalars_of_tf_summary_v2_are_read(tmp_path):
    writer = EventFileWriter(str(tmp_path))
    value = Summary.Value(tag="loss", tensor=TensorProto(dtype=1, float_val=[2.5]))
    writer.add_event(Event(step=7, wall_time=1.0, summary=Summary(value=[value])))
    writer.close()
    steps, values = events.read_scalars(str(tmp_path))["loss"]
    assert steps.tolist() == [7] and values.tolist() == [2.5]


def test_events_agree_with_metrics_jsonl_where_both_have_the_step(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path), enabled=True)
    for step in range(1, 7):
        writer.write(step, {"train/loss": 1.0 / step}, to_tensorboard=step % 2 == 0)
    writer.close()
    from_events = events.read_scalars(str(tmp_path), source="events")["train/loss"]
    from_jsonl = events.read_scalars(str(tmp_path), source="jsonl")["train/loss"]
    np.testing.assert_array_equal(from_events[0], [2, 4, 6])
    np.testing.assert_array_equal(from_jsonl[0], [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(from_events[1], from_jsonl[1][1::2], rtol=1e-6)  # events hold float32


def test_metrics_jsonl_is_the_fallback_and_missing_logs_are_an_error(tmp_path):
    with open(tmp_path / workdir_files.METRICS, "w") as f:
        for step, loss in [(1, 3.0), (2, 2.0), (2, 1.5)]:  # a resumed step: the later record wins
            f.write(json.dumps({"step": step, "train/loss": loss}) + "\n")
    steps, values = events.read_scalars(str(tmp_path))["train/loss"]
    assert steps.tolist() == [1, 2] and values.tolist() == [3.0, 1.5]
    with pytest.raises(FileNotFoundError, match="events.out.tfevents"):
        events.read_scalars(str(tmp_path), source="events")
    with pytest.raises(FileNotFoundError, match=workdir_files.METRICS):
        events.read_scalars(str(tmp_path / "nothing"))


def test_find_logdir_looks_in_the_directory_then_around_an_hf_export(tmp_path):
    (tmp_path / workdir_files.HF_EXPORT).mkdir()
    assert events.find_logdir(str(tmp_path / workdir_files.HF_EXPORT)) is None
    (tmp_path / workdir_files.METRICS).write_text("")
    assert events.find_logdir(str(tmp_path / workdir_files.HF_EXPORT)) == str(tmp_path)
    assert events.find_logdir(str(tmp_path)) == str(tmp_path)


def test_a_resumed_writer_drops_what_was_logged_past_its_step(tmp_path):
    """A run killed after logging step 6 resumes from its checkpoint of step 3: steps 4-6 are dropped from
    metrics.jsonl and purged from TensorBoard, then logged again; steps 7-8 of the old run never come back."""
    writer = metrics.MetricWriter(str(tmp_path), enabled=True)
    for step in range(1, 9):
        writer.write(step, {"train/loss": float(step)})
    writer.close()
    with open(tmp_path / workdir_files.METRICS, "a") as f:
        f.write('{"step": 9, "train/lo')  # cut short by the kill
    time.sleep(1.1)  # event files are named by the second they were opened
    writer = metrics.MetricWriter(str(tmp_path), enabled=True, resume_step=3)
    for step in range(4, 7):
        writer.write(step, {"train/loss": 10.0 + step})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / workdir_files.METRICS).read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in lines] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0),
                                                               (6, 16.0)]
    for source in ("events", "jsonl"):
        steps, values = events.read_scalars(str(tmp_path), source=source)["train/loss"]
        assert steps.tolist() == [1, 2, 3, 4, 5, 6] and values.tolist() == [1.0, 2.0, 3.0, 14.0, 15.0, 16.0]
