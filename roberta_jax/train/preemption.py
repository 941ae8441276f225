"""SIGTERM and SIGINT: every phase of a run ends with `Interrupted` (exit 75), and a multi-host run stops as one.

One handler per process, installed for the whole run by `handled()` (`cli.guarded` enters it), acts by where
the run is when the first signal arrives:

    anywhere else          `Interrupted` is raised at once in the main thread (building the data or the model,
                           compiling, restoring, exporting): files are written aside and renamed, so what was
                           being written is whole or absent, and `Runtime.__exit__` releases the workdir's lock
    inside `deferred()`    recorded, and raised when the section ends (a short critical section: an export
                           swapped into place)
    inside `polled()`      recorded; the training loop asks `after(step)` at every step, saves the step it
                           names and returns, and `Runtime.train` raises `Interrupted`

The handlers that were there before are put back as the first signal arrives, so a second one acts at once.

A multi-host run agrees on one step through the key-value store of JAX's coordination service (the one
`jax.distributed.initialize` starts; Orbax uses it too), one key per loop, `roberta_jax/stop/<n>/request`:

1. The host that got the signal publishes, at its next step check s, the key with s (create-only: if another
   host published first, the first value stands and both read it).
2. Every host reads the key at every step check (`after`), and stops after step T = s + `LAG`, s + 2.
3. Why every host sees the key by its check of T, with no host waiting for another: a host checks step k after
   it fetched step k - 1's metrics, and step k - 1 finishes nowhere before every host has dispatched it (its
   gradients and loss are reduced across hosts). The publisher dispatches step s + 1 only after publishing at
   its check of s, so any host's check of s + 2 comes after the key was set. A host that sees it earlier runs
   on to T; none blocks while another needs its collectives, so no deadlock; at T all save (the checkpointer's
   collective save) and return together.
4. A run that reaches its last step first (T beyond it, or a signal after the last check): every host
   publishes a signal it has not yet, waits at one barrier, and reads the key; all stop (exit 75 after the
   last step's checkpoint) or none.

Cost: on one process `after` reads one attribute, no RPC and no host sync; multi-host, one key-value read per
step (~0.3 ms on a local coordinator, while the device runs the step dispatched before) and one barrier at
the end. JAX's own preemption notifier (`jax_enable_preemption_service`) would take SIGTERM from these
handlers, ignore SIGINT, and at exit hold a host minutes at its barrier: `handled()` turns it off.

Outside the loop on a multi-host run, the signalled host raises at once and the others are not told: they fail
at their next collective (on the CPU, gloo's 30 s timeout: exit 1), and the signalled host's exit waits for
that at `jax.distributed`'s shutdown. A preemption of a slice signals every host, and each stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import signal
from collections.abc import Iterator

import jax
from jax._src.distributed import global_state

SIGNALS = (signal.SIGTERM, signal.SIGINT)
LAG = 2  # steps from the check that publishes a stop to the step every host has seen it by (the docstring's 3.)
END_BARRIER_TIMEOUT_MS = 600_000  # the other hosts finish their last step and its save within this

_loops = itertools.count()  # numbers the loops of this process: the same sequence on every host


class Interrupted(BaseException):
    """SIGTERM or SIGINT ended the run: the loop after saving a checkpoint, any other phase at once. The
    same command resumes it from the newest checkpoint.

    A BaseException, as KeyboardInterrupt is: raised wherever the signal lands, it must pass the `except
    Exception` of code that handles its own errors (a restore that sets an unreadable checkpoint aside would
    set a good one aside)."""


@dataclasses.dataclass
class _Handler:
    """The process's SIGTERM/SIGINT state (signals are per process: one instance, `_HANDLER`).

    `scopes` counts the open `handled`/`deferred`/`polled` contexts (the outermost installs the handlers and
    puts the previous ones back); `holds` those that record a signal instead of raising it; `pending` is a
    recorded signal that nothing has acted on yet."""

    scopes: int = 0
    holds: int = 0
    previous: dict | None = None
    received: int | None = None
    pending: bool = False

    def on_signal(self, signum: int, _frame) -> None:
        self.received = signum
        self.restore()
        if self.holds:
            self.pending = True
        else:
            raise Interrupted(interrupted_message(signum))

    def restore(self) -> None:
        """The handlers from before ours (the default one where Python did not install the previous one)."""
        for signum, handler in (self.previous or {}).items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self.previous = None


_HANDLER = _Handler()


def interrupted_message(signum: int) -> str:
    return f"interrupted by {signal.Signals(signum).name}; run the same command to resume from the newest checkpoint"


@contextlib.contextmanager
def _scope(hold: bool) -> Iterator[_Handler]:
    """Our handlers installed (by the outermost scope) while inside; with `hold`, signals recorded, not raised,
    and one recorded inside raised as `Interrupted` on leaving the last hold, unless something acted on it."""
    h = _HANDLER
    if h.scopes == 0:
        h.received, h.pending = None, False
        h.previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, h.on_signal)
    h.scopes += 1
    h.holds += hold
    try:
        yield h
    finally:
        h.scopes -= 1
        h.holds -= hold
        if h.scopes == 0:
            h.restore()
    if hold and h.pending and not h.holds:
        h.pending = False
        raise Interrupted(interrupted_message(h.received))


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """The whole run (`cli.guarded`): the first SIGTERM/SIGINT raises `Interrupted` wherever the run is, but in
    `deferred` sections and the loop. Turns off JAX's preemption notifier, which would take SIGTERM from us
    (it is set up by `jax.distributed.initialize`, so this comes first)."""
    jax.config.update("jax_enable_preemption_service", False)
    with _scope(hold=False):
        yield


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A critical section that a signal does not cut: the signal is recorded and `Interrupted` raised as the
    section ends (not inside the training loop, which acts on it itself). Without `handled`, it installs the
    handlers for the section."""
    with _scope(hold=True):
        yield


class _OneProcess:
    """The stop rule of a single process: stop at the first check after a signal."""

    def __init__(self, handler: _Handler):
        self.handler = handler
        self.stopped = False

    def after(self, step: int) -> bool:
        return self.handler.received is not None

    def finished(self) -> bool:
        self.stopped = self.handler.received is not None
        return self.stopped

    def reason(self) -> str:
        return signal.Signals(self.handler.received).name


class _Agreement:
    """The stop rule of a multi-host run: the protocol of the module docstring, loop number `number`."""

    def __init__(self, handler: _Handler, client, number: int):
        self.handler, self.client = handler, client
        self.directory = f"roberta_jax/stop/{number}/"
        self.request: dict | None = None  # {"step", "process", "signal"} of the published stop
        self.step, self.stopped = 0, False  # the last step checked; whether the loop stops by a signal

    def after(self, step: int) -> bool:
        self.step = step
        if self.request is None:
            self.request = self._read() or (self._publish() if self.handler.received is not None else None)
        if self.request is None:
            return False
        target = self.request["step"] + LAG
        if step > target:  # the docstring's 3. says this cannot be: the hosts would save different steps
            raise RuntimeError(f"process {jax.process_index()} saw the stop request {self.request} at step {step}, "
                               f"after the agreed step {target}: the hosts' steps are not in lockstep")
        self.stopped = step == target
        return self.stopped

    def finished(self) -> bool:
        """Once after the loop, on every host: True when it stopped at the agreed step; else, at the end of the
        run, whether any host got a signal before the barrier all of them wait at."""
        if not self.stopped:
            if self.request is None and self.handler.received is not None:
                self._publish()
            self.client.wait_at_barrier(f"{self.directory}end", END_BARRIER_TIMEOUT_MS)
            self.request = self.request or self._read()
            self.stopped = self.request is not None
        return self.stopped

    def reason(self) -> str:
        r = self.request
        return f"{signal.Signals(r['signal']).name} on process {r['process']} at step {r['step']}"

    def _read(self) -> dict | None:
        found = self.client.key_value_dir_get(self.directory)  # a list, empty until published: no exception
        return json.loads(found[0][1]) if found else None

    def _publish(self) -> dict:
        request = {"step": self.step, "process": jax.process_index(), "signal": int(self.handler.received)}
        try:
            self.client.key_value_set(f"{self.directory}request", json.dumps(request))
        except jax.errors.JaxRuntimeError:  # ALREADY_EXISTS: another host published first; its step stands
            first = self._read()
            if first is None:
                raise
            return first
        return request


@contextlib.contextmanager
def polled() -> Iterator[_OneProcess | _Agreement]:
    """The training loop: a signal is recorded, and the yielded rule says when to stop: `after(step)` at every
    step's check (True: save this step and return), `finished()` once after the loop (whether the run stopped
    by a signal; the same answer on every host) and `reason()` for the log. A signal the loop has not acted on
    by the end is raised as `Interrupted` when the context ends."""
    with _scope(hold=True) as h:
        multi = global_state.client is not None and jax.process_count() > 1
        rule = _Agreement(h, global_state.client, next(_loops)) if multi else _OneProcess(h)
        yield rule
        if rule.stopped:
            h.pending = False  # acted on: the loop saved and returns stopped
