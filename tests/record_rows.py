"""`python tests/record_rows.py train.py ARGS...`: train.py with every read of prepared rows recorded, one file per
process in $RECORD_ROWS_DIR (`rows-<process_index>-<pid>.txt`, one line of global row indices per read)."""

import os
import runpy
import sys
import threading

import jax

from roberta_jax.data import shards

_take, _lock = shards.ShardedRows.take, threading.Lock()


def take(self, rows):
    line = " ".join(map(str, rows)) + "\n"
    path = os.path.join(os.environ["RECORD_ROWS_DIR"], f"rows-{jax.process_index()}-{os.getpid()}.txt")
    with _lock, open(path, "a") as f:
        f.write(line)
    return _take(self, rows)


if __name__ == "__main__":
    shards.ShardedRows.take = take
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
