"""The training loop shared by pretraining (`train.py`) and fine-tuning (`finetune.py`).

Per step: next host batch -> global array -> compiled step -> the callbacks due (`IntervalCallback`) ->
checkpoint on the interval -> evaluation on the interval. Metrics of step N are fetched after step N + 1 is
dispatched, so the host never idles the device waiting for a scalar. SIGTERM/SIGINT finish the step in
flight, save a checkpoint and return (`preemption.polled`): one process ends within one step and
one checkpoint save of the signal; a multi-host run, signalled on any host, stops on every host
after the same step, at most `preemption.LAG` steps later, and saves it together. A second signal
ends a process at once. Consecutive non-finite steps beyond the limit stop the run with
`NonFiniteError`; state with a skipped update or overflowing params is never checkpointed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

from roberta_jax.train import checkpoint as ckpt
from roberta_jax.train import metrics, preemption

log = logging.getLogger("absl")


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


Interrupted = preemption.Interrupted  # what `Runtime.train` raises for a loop stopped by a signal


@dataclasses.dataclass
class LoopConfig:
    total_steps: int
    tokens_per_step: int  # for tokens/s; fine-tuning counts padded tokens
    flops_per_step: float  # for MFU; 0 leaves it out
    log_every_steps: int = 100
    eval_every_steps: int = 1000
    max_nonfinite_steps: int = 10
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class IntervalCallback:
    """`fn(state, step) -> {name: value}` run between steps every `every_steps` steps and at the last step
    (downstream probes, `finetune.probe`); its scalars are logged at `step` under their own names.

    It runs after the step and before that step's checkpoint is saved, so a resumed run neither skips it (the
    checkpoint it precedes was never saved: the resumed run does the step and the callback again, the logs of
    the steps past the resumed checkpoint dropped) nor runs it twice. `fn` must leave `state` as it found it:
    read its params, never donate them."""

    every_steps: int
    fn: Callable[[Any, int], dict[str, float]]

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every_steps == 0 or step == total_steps


@dataclasses.dataclass
class LoopResult:
    state: Any
    last_metrics: dict[str, float]
    stopped_by_signal: bool


class _Reporter:
    """Writes a step's metrics with its timing (step time, tokens/s, MFU), updates the progress line, and
    stops the run after `max_nonfinite_steps` consecutive skipped updates. `last` keeps the newest values."""

    def __init__(self, cfg: LoopConfig, writer: metrics.MetricWriter):
        self.cfg, self.writer = cfg, writer
        self.peak = metrics.peak_flops()
        self.progress = metrics.Progress(cfg.total_steps, enabled=cfg.progress)
        self.clock = time.perf_counter()
        self.last: dict[str, float] = {}

    def __call__(self, step_metrics: dict, step: int) -> None:
        cfg = self.cfg
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        now = time.perf_counter()
        step_time, self.clock = now - self.clock, now
        values["perf/step_time"] = step_time
        values["perf/tokens_per_sec"] = cfg.tokens_per_step / step_time
        if self.peak and cfg.flops_per_step:
            values["perf/mfu"] = cfg.flops_per_step / step_time / (self.peak * jax.device_count())
        self.writer.write(step, values, to_tensorboard=step % cfg.log_every_steps == 0 or step == cfg.total_steps)
        self.progress.update(step, values["train/loss"], values["perf/tokens_per_sec"])
        if values["train/nonfinite_streak"] >= cfg.max_nonfinite_steps:
            raise NonFiniteError(
                f"{int(values['train/nonfinite_streak'])} consecutive steps with non-finite loss or gradients "
                f"(up to step {step}); stopping. Lower the learning rate or raise max_nonfinite_steps."
            )
        self.last.update(values)


def run(
    state: Any,
    train_step: Callable,
    batches: Iterator[dict],
    put: Callable[[dict], dict],
    cfg: LoopConfig,
    checkpointer: ckpt.Checkpointer,
    writer: metrics.MetricWriter,
    evaluate: Callable[[Any, int], dict[str, float]] | None = None,
    callbacks: Sequence[IntervalCallback] = (),
) -> LoopResult:
    """Trains from `state.step + 1` to `cfg.total_steps`.

    `batches` yields host-local batches, which `put` makes global arrays, and must have `get_state()`
    (saved with every checkpoint). `evaluate(state, step)` returns scalars written under their own
    names; it runs every `eval_every_steps` and at the end. The `callbacks` due at a step run before its
    checkpoint (`IntervalCallback`), their logs flushed with it. A step is logged before its checkpoint
    is taken, and the logs are flushed with it, so a checkpoint never covers a step the logs lack.
    """
    report = _Reporter(cfg, writer)
    pending = None
    with preemption.polled() as stop:
        try:
            for step in range(int(state.step) + 1, cfg.total_steps + 1):
                state, step_metrics = train_step(state, put(next(batches)))
                if pending is not None:
                    report(*pending)
                pending = (step_metrics, step)
                checkpointer.check()
                # Checked once step - 1's metrics are back: the multi-host agreement relies on it.
                last, stopping = step == cfg.total_steps, stop.after(step)
                evaluating = evaluate is not None and (step % cfg.eval_every_steps == 0 or last)
                saving = checkpointer.due(step) or last or stopping
                due = [c for c in callbacks if c.due(step, cfg.total_steps)]
                if saving or evaluating or due:
                    report(*pending)
                    pending = None
                for callback in due:
                    _evaluate(callback.fn, state, step, writer, report.last)
                if due:  # what a probe logged is on disk even if the run dies before the next checkpoint
                    writer.flush()
                    report.clock = time.perf_counter()  # the next step's time is its own, not the probe's
                if saving:
                    _save_if_finite(step, state, batches, checkpointer, writer, report.last, force=last or stopping)
                if evaluating:
                    _evaluate(evaluate, state, step, writer, report.last)
                if stopping:
                    log.warning("%s: saved step %d, stopping", stop.reason(), step)
                    break
            if pending is not None:
                report(*pending)
        finally:
            writer.flush()
        checkpointer.wait()
        stopped = stop.finished()
    return LoopResult(state, report.last, stopped)


def _evaluate(evaluate: Callable[[Any, int], dict[str, float]], state: Any, step: int, writer: metrics.MetricWriter,
              last: dict[str, float]) -> None:
    """Runs `evaluate(state, step)` and writes its scalars under their own names into the logs and `last`."""
    eval_metrics = evaluate(state, step)
    if eval_metrics:
        writer.write(step, eval_metrics)
    last.update(eval_metrics)
    log.info("step %d: %s", step, {k: round(v, 4) for k, v in eval_metrics.items()})


def _save_if_finite(step: int, state: Any, batches, checkpointer: ckpt.Checkpointer, writer: metrics.MetricWriter,
                    values: dict[str, float], force: bool) -> None:
    """Checkpoints `step` unless its update was skipped or its params overflow (the last good checkpoint
    stays, and is not rotated out by bad ones); flushes the logs first."""
    writer.flush()
    if values.get("train/nonfinite_streak", 0) or not math.isfinite(values.get("train/param_norm", 0.0)):
        log.warning("step %d: not checkpointing non-finite state; the newest checkpoint stays the last good one",
                    step)
        return
    checkpointer.save(step, state, batches.get_state(), force=force)
