"""Ahead of time: the exact train and eval steps of a config compiled for a TPU slice (from a CPU host,
through libtpu's topology descriptions) or for the host's own devices, and what they need per chip.

    devices = target_devices("v5p-8")                  # or "v5p:2x2x1", "v5e:4x4", "host"
    compiled = compile_steps(config, devices, dump_dir="/tmp/hlo")
    report = step_report(compiled.train, compiled, dump_dir="/tmp/hlo")

Nothing is allocated: the state and the batch are shapes with their shardings, built by the same
functions train.py runs (`steps.abstract_train_state`, `pretrain.mlm_steps`, `runtime.jit_*_step`).
`compiled.memory_analysis()` gives bytes per device, `cost_analysis()` FLOPs and bytes accessed per
device; the largest buffers live at the peak come from XLA's buffer assignment, dumped with the HLO.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.train import chips, masking, metrics, optimizer, pretrain, runtime, sharding, steps

# Cloud TPU accelerator types (`v5p-128`) as chips in a slice's standard shape. v4 and v5p count
# TensorCores (two per chip) and are 3-D tori; v5e and v6e count chips and are 2-D.
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
HEADROOM = 0.9  # a program that needs more than this fraction of HBM is reported as not fitting


def topology_name(target: str) -> str:
    """`v5p-128` (Cloud TPU's accelerator type) -> `v5p:4x4x8` (libtpu's topology); a topology name
    such as `v5e:4x4` is returned as it is."""
    if ":" in target:
        return target
    found = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", target)
    if not found:
        raise ValueError(f"unknown TPU target {target!r}: give an accelerator type (v5p-128, v5e-16) or a "
                         "topology (v5p:4x4x8, v6e:4x4)")
    generation, count = found.group(1), int(found.group(2))
    chips_count = count // _CORES_PER_CHIP[generation]
    shapes = _SHAPES_2D if _CORES_PER_CHIP[generation] == 1 else _SHAPES_3D
    if chips_count not in shapes:
        raise ValueError(f"{target}: no standard {generation} slice of {chips_count} chips; sizes: "
                         f"{', '.join(f'{generation}-{n * _CORES_PER_CHIP[generation]}' for n in shapes)}")
    return f"{generation}:{shapes[chips_count]}"


def target_devices(target: str) -> list:
    """The devices to compile for: "host" (this machine's, e.g. a GPU node), or a TPU slice by
    accelerator type or topology name, one device per chip (v4 as megacore)."""
    if target == "host":
        return jax.devices()
    # Several processes may load libtpu at once (parallel tests, a sweep of reports): nothing runs on it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies

    name = topology_name(target)
    kwargs = {"chip_config_name": "megacore"} if name.startswith("v4") else {}
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices)


class StandInTokenizer:
    """What the step needs of a tokenizer, for a vocabulary of `vocab_size` laid out as roberta-base's:
    `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>` last. Used when the config names no tokenizer."""

    bos_token_id, pad_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3
    kind, model_type = "byte_level_bpe", "roberta"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.mask_token_id = vocab_size - 1
        self.all_special_ids = [0, 1, 2, 3, self.mask_token_id]

    def get_vocab(self) -> dict[str, int]:
        return {str(i): i for i in range(self.vocab_size)}


@dataclasses.dataclass
class CompiledSteps:
    train: Any  # jax.stages.Compiled of train_step(state, batch)
    eval: Any  # of eval_step(params, batch, batch_index)
    model: RobertaForMaskedLM
    mesh: jax.sharding.Mesh
    state_bytes: int  # params + optimizer state on one device
    tokens_per_step: int  # global
    rows_per_device: int  # of one microbatch
    length: int
    grad_accum_steps: int
    predictions_per_row: int  # the MLM head's masked slots per row
    hbm_bytes: int | None = None  # the HBM per chip compiled for (`hbm_options`); None: the chip's own

    def train_roofline(self, report: StepReport, chip: chips.Chip) -> Roofline:
        """The train step's `roofline` per microbatch: XLA's cost analysis counts the accumulation loop's
        body once (with the update after it), so the bound is on one microbatch's tokens and FLOPs.

        The FLOPs are those the step runs: the LM head at the masked slots only, and a fused attention
        kernel's (a custom call, which XLA does not count) added as PaLM's 12·layers·h·L per token."""
        c, tokens, n = self.model.config, self.tokens_per_step // self.grad_accum_steps, self.mesh.devices.size
        model_flops = metrics.flops_per_token(c, self.length, lm_head=self.predictions_per_row / self.length) * tokens
        unseen = 12.0 * c.num_hidden_layers * c.hidden_size * self.length * tokens if report.attention != "xla" else 0
        counted = dataclasses.replace(report, flops=report.flops + unseen / n)
        return roofline(counted, chip, tokens, n, model_flops)

    def activation_bytes(self, report: StepReport) -> int:
        """`activation_bytes` of this step's model and rows per chip, for the attention `report` ran."""
        return activation_bytes(self.model.config, self.rows_per_device, self.length,
                                scores_written=report.attention == "xla")


def compile_steps(config, devices: list, dump_dir: str | None = None, eval_step: bool = True,
                  hbm_bytes: int | None = None) -> CompiledSteps:
    """Lowers and compiles the config's MLM train and eval steps on a mesh over `devices`, as train.py
    would run them (global batch `batch_size` rows of `data.max_seq_length`, evaluated a microbatch at a
    time). `dump_dir`: XLA writes the optimized HLO and its buffer assignment there. `eval_step=False`
    compiles the train step alone (`CompiledSteps.eval` None). `hbm_bytes` (TPU only): compile as if each
    chip had that much HBM (`hbm_options`)."""
    tokenizer = _tokenizer(config)
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    model = pretrain.pretraining_model(config, pretrain.model_config(config, tokenizer),
                                       **runtime.model_kwargs(config, mesh))
    tx, schedule = optimizer.make_optimizer(config.optimizer)
    rules = sharding.axis_rules(config.logical_axis_rules)
    state, shardings = steps.abstract_train_state(model, tx, mesh, rules)
    train_fn, eval_fn = pretrain.mlm_steps(config, model, tokenizer, tx, schedule)
    rows_sharding = sharding.batch_sharding(mesh, rules)

    def batch(rows: int, *fields: str) -> dict[str, jax.ShapeDtypeStruct]:
        """A batch of `rows` rows: `fields` [rows, L], and the pair formats' next-sentence labels [rows]."""
        shapes = {f: (rows, config.data.max_seq_length) for f in fields}
        if model.next_sentence:
            shapes["nsp_labels"] = (rows,)
        return {f: jax.ShapeDtypeStruct(s, jnp.int32, sharding=rows_sharding) for f, s in shapes.items()}

    options = hbm_options(devices, hbm_bytes)
    if dump_dir:
        options.update(xla_dump_to=dump_dir, xla_dump_hlo_as_text=True)
    train = runtime.jit_train_step(train_fn, shardings, mesh, rules).lower(state, batch(config.batch_size, "input_ids"))
    evaluation = None
    if eval_step:
        micro = batch(config.batch_size // config.grad_accum_steps, "input_ids", "attention_mask")
        evaluation = runtime.jit_eval_step(eval_fn, shardings, mesh, rules).lower(state.params, micro, 0)
        evaluation = _compile(evaluation, options, "eval step", devices, hbm_bytes)
    return CompiledSteps(
        train=_compile(train, options, "train step", devices, hbm_bytes), eval=evaluation, model=model, mesh=mesh,
        state_bytes=sum(_shard_bytes(x) for x in jax.tree.leaves(state)),
        tokens_per_step=config.batch_size * config.data.max_seq_length,
        rows_per_device=config.batch_size // config.grad_accum_steps // sharding.batch_shards(mesh.shape, rules),
        length=config.data.max_seq_length, grad_accum_steps=config.grad_accum_steps,
        predictions_per_row=masking.default_max_predictions(config.data.max_seq_length,
                                                            config.masking.mlm_probability),
        hbm_bytes=hbm_bytes,
    )


class DoesNotFit(ValueError):
    """XLA could not fit a step in a chip's HBM."""


def _compile(lowered, options: dict, name: str, devices: list, hbm_bytes: int | None):
    """`lowered.compile(options)`; XLA's out-of-memory refusal as `DoesNotFit`, naming the step and chip."""
    try:
        return lowered.compile(options or None)
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        limit = ""
        if hbm_bytes:
            size = f"{hbm_bytes / 2**30:.2f} GiB" if hbm_bytes >= 2**30 else f"{hbm_bytes / 2**20:.0f} MiB"
            limit = f" as limited to {size}"
        raise DoesNotFit(f"the {name} does not fit in the HBM of a {devices[0].device_kind} chip{limit}: "
                         f"{str(err).splitlines()[0]}") from err


def hbm_options(devices: list, hbm_bytes: int | None) -> dict[str, str]:
    """XLA options that compile for chips with `hbm_bytes` of HBM each (None: the chips' own).

    XLA's TPU compiler spends the memory it is given: with most of a chip's HBM free its scheduler starts
    the backward pass's weight all-gathers early and packs buffers loosely; under a tighter limit it
    schedules closer, then rematerialises to fit. The limit shows what a step needs on a fuller chip (a
    larger batch, or a chip with less HBM) without changing the step.
    """
    if hbm_bytes is None:
        return {}
    platform = devices[0].platform
    if platform != "tpu":
        raise ValueError(f"an HBM limit applies to TPU targets (XLA's TPU compiler), not to {platform} devices")
    return {"xla_tpu_max_hbm_size_mib": str(hbm_bytes // 2**20)}


def _tokenizer(config):
    if config.tokenizer.path:
        from roberta_jax.data.tokenizer import RobertaTokenizer

        return RobertaTokenizer.from_pretrained(config.tokenizer.path)
    return StandInTokenizer(config.model.vocab_size or config.tokenizer.vocab_size)


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    return int(np.prod(x.sharding.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize


@dataclasses.dataclass
class Buffer:
    """One buffer live at the peak: its bytes, the shapes of the values that share it, and the JAX
    operations (`op_name` metadata) that wrote the largest of them."""

    bytes: int
    shapes: str
    ops: list[str]


@dataclasses.dataclass
class StepReport:
    """Per device: bytes of the compiled program's arguments, outputs (less those aliased to donated
    arguments), temporaries and generated code; FLOPs and bytes accessed per step."""

    name: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float
    peak_buffers: list[Buffer]
    attention: str = ""  # the attention that ran (`attention_kernel`)
    peak_live_bytes: int | None = None  # temporaries live at the schedule's peak (`peak_live_bytes`)

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes + self.code_bytes


def step_report(name: str, compiled, dump_dir: str | None = None, num_buffers: int = 8) -> StepReport:
    """The memory and cost analyses of one compiled step; its peak buffers when `dump_dir` holds its dump."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return StepReport(
        name=name, argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes - memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes, code_bytes=memory.generated_code_size_in_bytes,
        flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        peak_buffers=peak_buffers(dump_dir, f"jit_{name}", num_buffers) if dump_dir else [],
        attention=attention_kernel(compiled.as_text()),
        peak_live_bytes=peak_live_bytes(dump_dir, f"jit_{name}") if dump_dir else None,
    )


def attention_kernel(hlo: str) -> str:
    """The attention a compiled program runs, read from its optimized HLO: "splash" (the Pallas TPU kernel,
    a `tpu_custom_call` named splash_mha_*), "cudnn" (cuDNN's fused attention), else "xla" (written-out scores)."""
    if re.search(r'%splash_mha[\w.-]* = [^\n]*custom_call_target="tpu_custom_call"', hlo):
        return "splash"
    if "__cudnn$fmha" in hlo:
        return "cudnn"
    return "xla"


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


@dataclasses.dataclass
class Roofline:
    """The step-time lower bound of one device: its FLOPs at peak or its bytes at HBM bandwidth,
    whichever is slower, and the tokens/s and MFU that bound allows."""

    step_seconds: float
    bound: str  # "compute" or "memory"
    tokens_per_second_per_chip: float
    mfu: float


def roofline(report: StepReport, chip: chips.Chip, tokens_per_step: int, num_devices: int,
             model_flops_per_step: float) -> Roofline:
    compute, memory = report.flops / chip.peak_flops, report.bytes_accessed / chip.hbm_bandwidth
    seconds = max(compute, memory)
    return Roofline(
        step_seconds=seconds, bound="compute" if compute >= memory else "memory",
        tokens_per_second_per_chip=tokens_per_step / num_devices / seconds,
        mfu=model_flops_per_step / (seconds * chip.peak_flops * num_devices),
    )


def activation_bytes(c: RobertaConfig, rows: int, length: int, scores_written: bool) -> int:
    """What a backward pass must keep of an encoder's activations for `rows` rows of `length` on one
    chip, in 16-bit (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    Models", section 4.1): s·b·h·(34 + 5·a·s/h) bytes per layer. The 34·s·b·h are the layer's inputs,
    projections, FFN activations, LayerNorm inputs and 1-byte dropout masks; the 5·a·s²·b are the
    attention scores and softmax (2 bytes each) and their 1-byte dropout mask. A fused attention kernel
    keeps none of them (`scores_written=False`), and without attention dropout there is no mask (4).
    The MLM head and embeddings are left out: they are small beside the layers at the masked slots."""
    h, heads, layers = c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    per_layer = 34 * length * rows * h
    if scores_written:
        per_score = 5 if c.attention_probs_dropout_prob > 0 else 4
        per_layer += per_score * heads * length * length * rows
    return layers * per_layer


def model_flops_per_step(compiled: CompiledSteps, length: int) -> float:
    """The model's training FLOPs of one global step (`metrics.flops_per_token`, PaLM's count)."""
    return metrics.flops_per_token(compiled.model.config, length) * compiled.tokens_per_step
