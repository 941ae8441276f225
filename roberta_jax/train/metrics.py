"""Training metrics: FLOPs and MFU from the config, a TensorBoard + JSON-lines writer, a progress line.

FLOPs follow PaLM (Chowdhery et al. 2022, appendix B): per token, 6 x the matmul parameters
(every layer's q/k/v/out and FFN, the LM head's dense and the full vocabulary projection) plus
the attention term 12 x layers x hidden x length. Counting the full vocabulary projection even
when only masked positions are projected keeps MFU comparable across implementations.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Mapping

import jax

from roberta_jax import storage
from roberta_jax.model.config import RobertaConfig
from roberta_jax.train import chips
from roberta_jax.train import workdir as workdir_files


def flops_per_token(config: RobertaConfig, length: int, lm_head: bool | float = True) -> float:
    """Training FLOPs (forward + backward) per token at sequence `length` (PaLM's 6N + attention
    term): of an MLM step, or with `lm_head=False` of the encoder alone (fine-tuning, whose small
    task heads are left out). A float `lm_head` is the fraction of positions the LM head projects
    (pretraining projects only its masked slots; MFU as logged counts all of them, as HF's model runs)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    per_layer = 4 * h * h + 2 * h * config.intermediate_size
    matmul_params = layers * per_layer + float(lm_head) * (h * h + h * config.vocab_size)
    return 6.0 * matmul_params + 12.0 * layers * h * length


def peak_flops(device: jax.Device | None = None) -> float | None:
    """Peak bf16 FLOP/s of one device, or None where unknown (e.g. CPU)."""
    return peak_flops_by_kind((device or jax.devices()[0]).device_kind)


def peak_flops_by_kind(kind: str) -> float | None:
    """Peak bf16 FLOP/s for a device name such as 'NVIDIA H100 80GB HBM3' (`chips.CHIPS`)."""
    chip = chips.chip_for(kind)
    return chip.peak_flops if chip else None


class MetricWriter:
    """TensorBoard events and `metrics.jsonl` in `logdir` (local or `gs://`), written by process 0 only.

    `metrics.jsonl` is a `storage.AppendLog`: appended to on local disk, one object per flush on object storage.
    TensorBoard's writer on `gs://` uploads its event file whole at each flush. The loop flushes before every
    checkpoint, so a checkpoint never covers a step the logs lack.

    `resume_step`: the step a run resumes from; what an earlier run logged past it is dropped (from
    `metrics.jsonl` now, from TensorBoard through its purge_step) since the run logs those steps again.
    """

    def __init__(self, logdir: str, enabled: bool | None = None, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            storage.makedirs(logdir)
            keep = None if resume_step is None else functools.partial(_logged_up_to, step=resume_step)
            self._jsonl = storage.AppendLog(storage.join(logdir, workdir_files.METRICS), keep=keep)
            self._tb = SummaryWriter(logdir, purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, scalars: Mapping[str, float], to_tensorboard: bool = True) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        if to_tensorboard:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _logged_up_to(line: str, step: int) -> bool:
    """Whether a `metrics.jsonl` line is a whole record of a step up to `step` (a line cut short by a kill is not)."""
    try:
        return json.loads(line)["step"] <= step
    except (ValueError, KeyError, TypeError):
        return False


def read_metrics(logdir: str) -> dict[int, dict[str, float]]:
    """`metrics.jsonl` of `logdir` (local or `gs://`) as {step: scalars}; after a resume the later record of a
    step wins. A line cut short by a kill is skipped."""
    path = storage.join(logdir, workdir_files.METRICS)
    if not storage.exists(path) and not storage.exists(f"{path}.d"):
        raise FileNotFoundError(f"no {workdir_files.METRICS} in {logdir}")
    out: dict[int, dict[str, float]] = {}
    for line in storage.read_lines(path):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        out.setdefault(record.pop("step"), {}).update(record)
    return out


class Progress:
    """One refreshed line: step, loss, tokens/s and ETA (process 0, only when `enabled`)."""

    def __init__(self, total_steps: int, enabled: bool = True, stream=sys.stderr):
        self.total, self.enabled, self.stream = total_steps, enabled and jax.process_index() == 0, stream
        self._t0, self._s0 = time.perf_counter(), None

    def update(self, step: int, loss: float, tokens_per_sec: float) -> None:
        if not self.enabled:
            return
        if self._s0 is None:
            self._t0, self._s0 = time.perf_counter(), step
        done = step - self._s0
        rate = done / max(time.perf_counter() - self._t0, 1e-9)
        eta = (self.total - step) / rate if done and rate > 0 else float("nan")
        line = f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_sec:,.0f} tok/s  ETA {_hms(eta)}"
        end = "\r" if self.stream.isatty() else "\n"
        print(line, end=end, file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    if seconds != seconds:
        return "--:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
