"""The HBM traffic of a compiled program, read from its optimized HLO: what each top-level instruction
reads and writes in HBM, and what it moves through on-chip memory instead.

    traffic = hlo_traffic.program_traffic(compiled.as_text())
    traffic.hbm_bytes, traffic.on_chip_bytes, traffic.top(10)

XLA's `cost_analysis()["bytes accessed"]` sums the operands and outputs of every instruction wherever
they live. On TPU the compiler places many of them in VMEM (the core's on-chip scratchpad, the layout's
memory space `S(1)`; `S(2)` and `S(6)` are the scalar and semaphore memories): a fusion that reads a
VMEM buffer its neighbour wrote moves nothing through HBM. The roofline's memory term is HBM
bandwidth, so it is these bytes, not XLA's sum, that bound a step.

Counted per top-level instruction (the entry computation and what it runs: `while` bodies and
conditions, `call`s and `conditional` branches; instructions inside a fusion stay in registers and
VMEM): its operands that live in HBM are read, its outputs that live in HBM are written. Asynchronous
pairs (`copy-start`/`copy-done`, `all-gather-start`/`-done`, `async-start`/`-done`) read their
operands at the start (an asynchronous slice reads only the slice) and write their result at the
done. Instructions that move nothing (parameters,
tuples, get-tuple-element, bitcasts, the loops themselves) count zero. A `while` body counts once, as
XLA's cost analysis counts it: with gradient accumulation, one microbatch plus what runs outside the
loop (the update). A fusion that updates a slice of a buffer in place (`dynamic-update-slice` at its
root, its output aliased to an operand) moves the slice, not the buffer. Sizes are logical (the
elements times their width), not the tiles' padded sizes.
"""

from __future__ import annotations

import collections
import dataclasses
import re

# Memory spaces of TPU layouts (`{...S(n)}`): 0 is HBM; 1 VMEM; 2 and 6 the sync-flag and scalar memories.
HBM = 0
_WIDTH = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5,
          "u4": 0.5, "token": 0}
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) \(")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
# Instructions that move no data of their own.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "iota"}


@dataclasses.dataclass
class Instruction:
    """One top-level instruction: its HBM bytes read and written, its bytes through on-chip memory, and
    the JAX operation behind it (`op_name` metadata; "" when it has none)."""

    name: str
    opcode: str
    hbm_read: float
    hbm_written: float
    on_chip: float
    op_name: str

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_read + self.hbm_written


@dataclasses.dataclass
class Traffic:
    """The instructions of one program, with totals."""

    instructions: list[Instruction]

    @property
    def hbm_bytes(self) -> float:
        return sum(i.hbm_bytes for i in self.instructions)

    @property
    def on_chip_bytes(self) -> float:
        return sum(i.on_chip for i in self.instructions)

    def top(self, n: int) -> list[tuple[str, int, float]]:
        """The `n` JAX operations moving the most HBM bytes: (operation, instructions, bytes), with the
        layer index of `layer_<i>` and the instruction's own numbering left out, so the same operation of
        every layer adds up in one row."""
        groups: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        for i in self.instructions:
            if i.hbm_bytes:
                key = operation(i)
                groups[key][0] += 1
                groups[key][1] += i.hbm_bytes
        rows = sorted(groups.items(), key=lambda kv: -kv[1][1])[:n]
        return [(key, int(count), total) for key, (count, total) in rows]


def operation(instruction: Instruction) -> str:
    """`instruction`'s JAX operation without the step's own prefix, layer indices as `layer_*`; the
    opcode when it has no metadata."""
    name = instruction.op_name or f"({instruction.opcode})"
    name = re.sub(r"^jit\(\w+\)/", "", name)
    name = re.sub(r"while/body/(closed_call/)?", "", name)
    return re.sub(r"layer_\d+", "layer_*", name)


def array_bytes(shape: str) -> dict[int, float]:
    """Bytes of the arrays in an HLO shape (an array or a tuple of them) by memory space."""
    spaces: dict[int, float] = collections.defaultdict(float)
    for dtype, dims, layout in _ARRAY.findall(shape):
        if dtype not in _WIDTH:
            continue
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        space = re.search(r"S\((\d+)\)", layout or "")
        spaces[int(space.group(1)) if space else HBM] += count * _WIDTH[dtype]
    return spaces


def program_traffic(hlo: str) -> Traffic:
    """The `Traffic` of an optimized HLO module's text (`compiled.as_text()` or XLA's
    `*after_optimizations.txt` dump)."""
    computations, shapes, lines = _parse(hlo)
    entry = next(name for name, (is_entry, _) in computations.items() if is_entry)
    instructions: list[Instruction] = []
    seen: set[str] = set()

    def walk(computation: str) -> None:
        if computation in seen:
            return
        seen.add(computation)
        for name in computations[computation][1]:
            line = lines[name]
            opcode, operands = _opcode_operands(line, shapes[name])
            for attribute in ("body", "condition", "to_apply"):
                called = re.search(rf"\b{attribute}=%([\w.\-]+)", line)
                if called and opcode in ("while", "call"):
                    walk(called.group(1))
            if opcode == "conditional":
                for called in re.findall(r"%([\w.\-]+)", _attribute(line, "branch_computations")):
                    walk(called)
            if opcode in _FREE:
                continue
            read = _sum_spaces(array_bytes(shapes[o]) for o in operands if o in shapes)
            written = array_bytes(shapes[name])
            if opcode.endswith("-start"):
                written = {}  # the result is written at the matching -done
                sliced = _sliced_bytes(line, computations, lines, shapes)
                if sliced is not None:  # an asynchronous slice reads the slice, not the array
                    read = {space: sliced for space in read}
            elif opcode.endswith("-done"):
                read = {}  # the operand was read at the -start
            elif opcode == "fusion" and _in_place_update(line, computations, lines, shapes):
                read, written = _in_place_bytes(line, computations, lines, shapes)
            instructions.append(Instruction(
                name=name, opcode=opcode, hbm_read=read.get(HBM, 0.0), hbm_written=written.get(HBM, 0.0),
                on_chip=sum(v for k, v in read.items() if k != HBM) + sum(v for k, v in written.items() if k != HBM),
                op_name=_op_name(name, lines, shapes)))

    walk(entry)
    return Traffic(instructions)


def _op_name(name: str, lines: dict[str, str], shapes: dict[str, str], depth: int = 0) -> str:
    """The `op_name` metadata of instruction `name`; for one without (a copy the memory-space assignment
    added, a collective), its first operand's, followed up to a few steps back."""
    found = re.search(r'op_name="([^"]+)"', lines[name])
    if found or depth == 4:
        return found.group(1) if found else ""
    for operand in _opcode_operands(lines[name], shapes[name])[1]:
        if operand in lines:
            return _op_name(operand, lines, shapes, depth + 1)
    return ""


def _parse(hlo: str):
    """{computation: (is_entry, [instruction names])}, {instruction: its shape text}, {instruction: line}."""
    computations: dict[str, tuple[bool, list[str]]] = {}
    shapes: dict[str, str] = {}
    lines: dict[str, str] = {}
    current: list[str] | None = None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = []
            computations[header.group(2)] = (bool(header.group(1)), current)
            continue
        found = _INSTRUCTION.match(line)
        if found and current is not None:
            name = found.group(1)
            current.append(name)
            lines[name] = line
            shapes[name] = _shape_text(line[found.end():])
    return computations, shapes, lines


def _shape_text(rest: str) -> str:
    """The shape at the start of `rest` (what follows `%name = `): one array, or a parenthesised tuple."""
    if not rest.startswith("("):
        return rest.split(" ", 1)[0]
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[: i + 1]
    return rest


def _opcode_operands(line: str, shape: str) -> tuple[str, list[str]]:
    rest = line[line.index(" = ") + 3 + len(shape):].lstrip()
    opcode = rest[: rest.index("(")]
    depth, end = 0, len(rest)
    for i in range(len(opcode), len(rest)):
        depth += rest[i] == "("
        depth -= rest[i] == ")"
        if depth == 0:
            end = i
            break
    return opcode, re.findall(r"%([\w.\-]+)", rest[len(opcode): end + 1])


def _attribute(line: str, key: str) -> str:
    found = re.search(rf"\b{key}=\{{([^}}]*)\}}", line)
    return found.group(1) if found else ""


def _sum_spaces(parts) -> dict[int, float]:
    total: dict[int, float] = collections.defaultdict(float)
    for part in parts:
        for space, size in part.items():
            total[space] += size
    return total


def _fused_root(line: str, computations, lines) -> tuple[str, str] | None:
    """(name, line) of the root instruction of the computation a fusion or `async-start` calls."""
    called = re.search(r"\bcalls=%([\w.\-]+)", line)
    if not called or called.group(1) not in computations:
        return None
    body = computations[called.group(1)][1]
    roots = [n for n in body if lines[n].lstrip().startswith("ROOT ")]
    return (roots[0], lines[roots[0]]) if roots else None


def _sliced_bytes(line: str, computations, lines, shapes) -> float | None:
    """The bytes an `async-start` wrapping a slice or dynamic-slice reads (its result's); None otherwise."""
    root = _fused_root(line, computations, lines)
    if not root or _opcode_operands(root[1], shapes[root[0]])[0] not in ("slice", "dynamic-slice"):
        return None
    return sum(array_bytes(shapes[root[0]]).values())


def _in_place_update(line: str, computations, lines, shapes) -> bool:
    root = _fused_root(line, computations, lines)
    return bool(root and "output_to_operand_aliasing" in line
                and _opcode_operands(root[1], shapes[root[0]])[0] == "dynamic-update-slice")


def _in_place_bytes(line: str, computations, lines, shapes) -> tuple[dict, dict]:
    """An in-place slice update reads and writes the update, not the buffer it lands in."""
    name, root = _fused_root(line, computations, lines)
    update = _opcode_operands(root, shapes[name])[1][1]
    size = array_bytes(shapes[update])
    space = next(iter(array_bytes(shapes[name])), HBM)  # where the buffer lives
    moved = {space: sum(size.values())}
    return moved, moved
