"""Command-line pieces shared by the entry points (`train.py`, `finetune.py`, the tools): loading a
config file, config-flag parsing with a one-line error for an unknown key, the exit codes, errors as
one line (`--verbose` for the traceback; `run` for absl mains, `add_verbose` + `one_line_errors` for
argparse ones), and the log filter that keeps Orbax's per-save lines out of the way.

Exit codes of `train.py` and `finetune.py`:

    0   finished
    1   the run failed (a non-finite streak, a checkpoint that cannot be written, an unexpected error)
    2   bad input: a config field, a data file, the workdir (in use, or fixed to another architecture)
    75  interrupted by SIGTERM/SIGINT: in the training loop after saving a checkpoint (every host of a
        multi-host run the same step), in any other phase at once, the workdir's lock released and
        nothing half-written; rerun the same command to resume (EX_TEMPFAIL, so a scheduler or sweep
        can tell it from success and from failure)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator

import ml_collections
from absl import app, flags

from roberta_jax import storage
from roberta_jax.suggest import did_you_mean
from roberta_jax.train import checkpoint, loop, preemption, validate
from roberta_jax.train import workdir as workdir_files

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 75

# Errors whose message says all: one line without --verbose. Anything else keeps its traceback.
BAD_INPUT = (validate.ConfigError, workdir_files.WorkdirError, storage.StorageError, FileNotFoundError, ValueError)
FAILURES = (loop.NonFiniteError, checkpoint.CheckpointError)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py` or `path/to/config.py:arg`, as `--config` takes it: its `get_config([arg])`."""
    path, _, arg = spec.partition(":")
    module = load_module(path, "config file")
    return module.get_config(arg) if arg else module.get_config()


def load_module(path: str, what: str):
    """The Python file `path` (a config or runs file) run as a module; `what` names it in the error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_" + what.replace(" ", "_"), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl parsing; an unknown `--config.` key exits with one line that names it in full and the
    nearest valid key: `finetune.py: unknown config key 'optimizer.peak_lrr'; did you mean 'optimizer.peak_lr'?`"""
    try:
        return flag_values(argv)
    except (KeyError, AttributeError) as err:
        print(f"{program_name(argv[0])}: {unknown_key_message(err, argv)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def unknown_key_message(err: BaseException, argv: list[str]) -> str:
    """ml_collections raises KeyError("'key'\\nDid you mean \"other\" instead of \"key\"?"), sometimes
    wrapped in an AttributeError; this names the whole dotted key as given on the command line."""
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    text = str(err.args[0] if err.args else err)
    found = re.match(r"\W*([\w-]+)", text)
    if found is None:
        return f"bad config override: {text}"
    key, prefix = found.group(1), ""
    for arg in argv[1:]:
        path = arg.lstrip("-").split("=", 1)[0].split(".")
        if path[0] == "config" and key in path[1:]:
            prefix = ".".join(path[1 : path.index(key, 1)])
            break
    full = f"{prefix}.{key}" if prefix else key
    # ml_collections has already chosen the nearest key of the same section.
    hinted = re.search(r'Did you mean "([^"]+)"', text)
    suggestion = [f"{prefix}.{hinted.group(1)}" if prefix else hinted.group(1)] if hinted else []
    return f"unknown config key {full!r}{did_you_mean(full, suggestion, cutoff=0.0)}"


def run(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)` with `parse_flags`, a `--verbose` flag and `guarded` errors and exit codes."""
    flags.DEFINE_bool("verbose", False, "on an error, print the traceback, not only its one-line message")
    app.run(lambda argv: guarded(main, argv), flags_parser=parse_flags)


def guarded(main: Callable[[list[str]], None], argv: list[str]) -> None:
    """Runs `main(argv)` under `one_line_errors`, `--verbose` from absl's flags, and SIGTERM/SIGINT handled for
    the whole of it (`preemption.handled`): the first one ends any phase with `EXIT_INTERRUPTED`."""
    with one_line_errors(program_name(argv[0]), flags.FLAGS["verbose"].value), preemption.handled():
        main(argv)


def program_name(argv0: str) -> str:
    """The command as its user typed it, to start its messages: `python -m roberta_jax.tools.prepare` for a
    module run with `-m` (whose argv[0] is the module's file), else the script's name (`train.py`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.origin and os.path.abspath(argv0) == os.path.abspath(spec.origin):
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return os.path.basename(argv0)


def add_verbose(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `--verbose` flag of an argparse command line (the tools'), to pass to `one_line_errors`."""
    parser.add_argument("--verbose", action="store_true",
                        help="on an error, print the traceback, not only its one-line message")
    return parser


@contextlib.contextmanager
def one_line_errors(prog: str, verbose: bool = False) -> Iterator[None]:
    """An interrupted run exits `EXIT_INTERRUPTED`; a known error prints `PROG: error: MESSAGE` (and the
    traceback with `verbose`) and exits `EXIT_BAD_INPUT` or `EXIT_FAILED`; anything else keeps its traceback."""
    try:
        yield
    except preemption.Interrupted as err:
        print(f"{prog}: {err}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (*BAD_INPUT, *FAILURES) as err:
        if verbose:
            traceback.print_exc()
        message = " ".join(str(err).strip().splitlines()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_FAILED if isinstance(err, FAILURES) else EXIT_BAD_INPUT)


class QuietLibraries(logging.Filter):
    """Keeps the per-save and per-file INFO lines of Orbax and of the gs:// client (fsspec's read-ahead cache)
    out of the log; their warnings still show."""

    PATHS = ("/orbax/", "/fsspec/", "/gcsfs/")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(p in record.pathname for p in self.PATHS)


def quiet_libraries() -> None:
    """Adds `QuietLibraries` to every handler of the root logger (absl's, once `app.run` started)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietLibraries())
