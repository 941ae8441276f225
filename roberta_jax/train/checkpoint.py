"""Orbax checkpoints of the train state and the data iterator's position, side by side.

Saves are asynchronous (training goes on while the arrays are written) and atomic: on local disk Orbax
writes into a temporary directory and renames it when complete; on `gs://`, which has no rename, it
writes the step directory in place and its `commit_success.txt` last. Either way only a committed step is
a checkpoint: a run killed mid-save leaves the previous checkpoint as the newest one, and the uncommitted
directory is deleted when the checkpoints are next opened, so it is never restored and never blocks saving
that step again. A newest checkpoint that is complete but unreadable is
moved aside into `checkpoints.unreadable/` (kept for inspection, named in the log) and the one before
is restored, so the resumed run saves that step again. A save that fails in the background stops
the run at the next step with `CheckpointError` (the directory and the cause). Restoring takes the shardings of the
target state, so a checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from roberta_jax import storage
from roberta_jax.train import workdir as workdir_files

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written."""


class Checkpointer:
    """Keeps the last `keep` checkpoints of `directory`, one every `every_steps` steps."""

    def __init__(self, directory: str, every_steps: int, keep: int = 3, asynchronous: bool = True):
        self.directory = storage.resolve(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                cleanup_tmp_directories=True,  # an uncommitted step (a save cut short) is deleted on opening
                # Exactly the multiples of `every_steps` (Orbax's default adds the first step too);
                # the loop forces the final step and the one a SIGTERM interrupts.
                save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
                enable_async_checkpointing=asynchronous,
                # Step directories made in save() itself: a directory that cannot be written fails there and
                # then, where in the background Orbax's threads would wait minutes for a signal that never comes.
                async_options=ocp.AsyncOptions(timeout_secs=600, create_directories_asynchronously=False),
            ),
        )

    def due(self, step: int) -> bool:
        """Whether `step` is on the interval."""
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Saves when `step` is on the interval (or `force`); returns whether it saved."""
        with self._errors(f"saving step {step}"):
            return self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
                force=force,
            )

    def check(self) -> None:
        """Raises `CheckpointError` if a background save has failed."""
        with self._errors("a background save"):
            self.manager.check_for_errors()

    def _errors(self, what: str):
        return _rethrown(f"checkpoint {what} in {self.directory} failed")

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """(state, data_state, step) of the newest readable checkpoint, or None if there is none.

        `abstract_state`: a tree of `jax.ShapeDtypeStruct` with the target shardings.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is set aside the same way
                log.warning("checkpoint %d in %s is unreadable (%s: %s); moved to %s, trying the one before",
                            step, self.directory, type(err).__name__, str(err)[:300], self._move_aside(step))
                continue
            return restored.state, dict(restored.data), step
        return None

    def resume(self, state: Any, batches) -> tuple[Any, int]:
        """(state, step) of the newest readable checkpoint, with `batches` (a `data.RowBatches`) moved to
        the position saved beside it; (`state`, 0) unchanged when there is none. `state` gives the target
        shapes and shardings."""
        restored = self.restore_latest(abstract_like(state))
        if restored is None:
            return state, 0
        state, data_state, step = restored
        batches.set_state(data_state)
        return state, step

    def _move_aside(self, step: int) -> str:
        """Moves checkpoint `step` (process 0) into `DIRECTORY.unreadable/STEP-TIME`; returns where."""
        aside = storage.join(f"{self.directory}.unreadable", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            storage.makedirs(storage.parent(aside))
            storage.move(storage.join(self.directory, str(step)), aside)
        if jax.process_count() > 1:  # no host looks at the directory again before the move is done
            multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self.manager.reload()
        return aside

    def wait(self) -> None:
        with self._errors("a background save"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


@contextlib.contextmanager
def _rethrown(prefix: str):
    """Any exception inside, raised again as `CheckpointError("PREFIX: TYPE: MESSAGE")`."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{prefix}: {type(err).__name__}: {str(err)[:500]}") from err


def load_params(workdir: str, step: int | None = None) -> tuple[Any, int]:
    """The params of a pretraining workdir's checkpoint (the newest readable one when `step` is None), as a
    tree of host arrays, and its step. The matching architecture is `WORKDIR/model_config.json`."""
    directory = storage.join(storage.resolve(workdir), workdir_files.CHECKPOINTS)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    candidates = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not candidates:
        raise FileNotFoundError(f"no checkpoint under {directory}")
    try:
        for number in candidates:
            try:
                restored = manager.restore(number, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
                return jax.device_get(restored.state["params"]), number
            except Exception as err:  # noqa: BLE001 - the newest readable one is wanted; left in place (read only)
                if step is not None or number == candidates[-1]:
                    raise CheckpointError(f"checkpoint {number} in {directory} is unreadable: "
                                          f"{type(err).__name__}: {str(err)[:300]}") from err
                log.warning("checkpoint %d in %s is unreadable (%s); using the one before", number, directory,
                            type(err).__name__)
    finally:
        manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
