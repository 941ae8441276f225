"""What XLA writes beside a compiled program when asked to dump it (`xla_dump_to`): the buffers live at
the schedule's peak (the memory-usage report and buffer assignment) and the bytes live there (the
live-range dump), each traced back to the JAX operations that wrote them (`op_name` metadata).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re


@dataclasses.dataclass
class Buffer:
    """One buffer live at the peak: its bytes, the shapes of the values that share it, and the JAX
    operations (`op_name` metadata) that wrote the largest of them."""

    bytes: int
    shapes: str
    ops: list[str]



def peak_buffers(dump_dir: str, module: str, n: int) -> list[Buffer]:
    """The `n` largest buffers of XLA's memory-usage report for `module` (e.g. "jit_train_step"), each
    with the operations that wrote the values living in it. Empty when the backend wrote no report."""
    prefix = _dump_prefix(dump_dir, module, "-memory-usage-report.txt")
    if prefix is None:
        return []
    assignment, hlo = _read(f"{prefix}-buffer-assignment.txt"), _read(f"{prefix}.txt")
    buffers = []
    for size, offset, shapes in _report_rows(f"{prefix}-memory-usage-report.txt")[:n]:
        values = re.findall(rf"<\d+ ([\w.-]+)(?:\{{[\d,]*\}})? @\d+> \(size=(\d+),offset={offset}\)", assignment)
        largest = sorted(values, key=lambda v: -int(v[1]))[:2]
        buffers.append(Buffer(size, shapes, [_op_name(hlo, name) for name, _ in largest]))
    return buffers


def peak_live_bytes(dump_dir: str, module: str) -> int | None:
    """The bytes of the values live at the peak of `module`'s schedule, less the entry computation's
    parameters, from XLA's live-range dump (TPU); None when the backend wrote none.

    The temporaries' allocation is at least this: what it holds above it is what the allocator could not
    pack into the gaps between buffers of different lifetimes."""
    prefix = _dump_prefix(dump_dir, module, "-live-range.txt")
    if prefix is None:
        return None
    live, hlo = _read(f"{prefix}-live-range.txt"), _read(f"{prefix}.txt")
    params = set(re.findall(r"%([\w.\-]+) = \S+ parameter\(\d+\)", hlo[hlo.find("\nENTRY "):]))
    peak = live[live.find("(peak):"):live.find("Stack trace breakdown")]
    rows = re.findall(r"^\s+([\w.\-]+)\{[\d,]*\}: (\d+) bytes", peak, re.M)
    return sum(int(size) for name, size in rows if name not in params) if rows else None


def _dump_prefix(dump_dir: str, module: str, suffix: str) -> str | None:
    """The path, less `suffix`, of the newest optimized-module file of `module` in `dump_dir` that ends
    with `suffix` (e.g. "-live-range.txt"); None when XLA wrote no such file."""
    found = sorted(glob.glob(os.path.join(dump_dir, f"*{module}*after_optimizations{suffix}")))
    return found[-1].removesuffix(suffix) if found else None


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _report_rows(path: str) -> list[tuple[int, int, str]]:
    """(bytes, offset, shapes) of the rows of the default memory space's table, largest first."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if rows and not line.strip():
                break  # the default memory space's table ends at the first blank line
            found = re.match(r"\s*[\d.]+\w+\(\s*\d+%\);\s*([\d.]+)(\w+);\s*(\d+);\s*\d+;\s*(.*)$", line)
            if found:
                rows.append((_bytes(found.group(1), found.group(2)), int(found.group(3)), found.group(4)))
    return sorted(rows, key=lambda r: -r[0])


def _bytes(number: str, unit: str) -> int:
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
    return int(float(number) * scale)


def _op_name(hlo: str, instruction: str) -> str:
    """The JAX operation behind an HLO instruction (its `op_name` metadata), or the instruction's name."""
    found = re.search(rf"%{re.escape(instruction)} = .*?op_name=\"([^\"]+)\"", hlo)
    return found.group(1) if found else instruction
