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
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.model.config import RobertaConfig
from roberta_jax.model.heads import RobertaForMaskedLM
from roberta_jax.train import (
    chips,
    hlo_traffic,
    masking,
    metrics,
    optimizer,
    pretrain,
    runtime,
    sharding,
    steps,
    xla_dump,
)

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
    param_count: int = 0  # the model's parameters
    param_shards: float = 1.0  # the ways the parameters are split over the chips (FSDP, tensor), on average
    state_shards: float = 1.0  # the same for the optimizer state
    tensor_shards: int = 1  # the mesh's `tensor` axis

    def traffic(self) -> TrafficAccount:
        """`traffic_bytes` of this step on one chip: one microbatch and the update."""
        return traffic_bytes(self.model.config, self.rows_per_device, self.length, self.predictions_per_row,
                             self.param_count, self.param_shards, self.state_shards, self.tensor_shards,
                             width=jnp.dtype(self.model.dtype).itemsize, accumulating=self.grad_accum_steps > 1)

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
                                scores_written=report.attention == "xla",
                                lane_padded=report.attention == "splash" and self.model.config.head_dim % 128 != 0)


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
    params, opt_state = jax.tree.leaves(state.params), jax.tree.leaves(state.opt_state)
    return CompiledSteps(
        train=_compile(train, options, "train step", devices, hbm_bytes), eval=evaluation, model=model, mesh=mesh,
        state_bytes=sum(_shard_bytes(x) for x in jax.tree.leaves(state)),
        param_count=sum(x.size for x in params),
        param_shards=_shards(params), state_shards=_shards(opt_state), tensor_shards=mesh.shape.get("tensor", 1),
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


def _shards(leaves: list) -> float:
    """How many ways `leaves` are split: their bytes over the bytes one device holds."""
    whole = sum(x.size * jnp.dtype(x.dtype).itemsize for x in leaves)
    return whole / max(sum(_shard_bytes(x) for x in leaves), 1)


@dataclasses.dataclass
class StepReport:
    """Per device: bytes of the compiled program's arguments, outputs (less those aliased to donated
    arguments), temporaries and generated code; FLOPs and bytes accessed per step (XLA's cost analysis, which
    counts on-chip memory too) and the HBM traffic read from the optimized HLO (`hlo_traffic`)."""

    name: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float
    peak_buffers: list[xla_dump.Buffer]
    attention: str = ""  # the attention that ran (`attention_kernel`)
    peak_live_bytes: int | None = None  # temporaries live at the schedule's peak (`peak_live_bytes`)
    traffic: hlo_traffic.Traffic | None = None  # per instruction, from the optimized HLO

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes + self.code_bytes

    @property
    def hbm_bytes(self) -> float:
        """Bytes read and written in HBM per step (XLA's bytes accessed where the HLO was not read)."""
        return self.bytes_accessed if self.traffic is None else self.traffic.hbm_bytes


def step_report(name: str, compiled, dump_dir: str | None = None, num_buffers: int = 8) -> StepReport:
    """The memory and cost analyses of one compiled step; its peak buffers when `dump_dir` holds its dump."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    hlo = compiled.as_text()
    return StepReport(
        name=name, argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes - memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes, code_bytes=memory.generated_code_size_in_bytes,
        flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        peak_buffers=xla_dump.peak_buffers(dump_dir, f"jit_{name}", num_buffers) if dump_dir else [],
        attention=attention_kernel(hlo),
        peak_live_bytes=xla_dump.peak_live_bytes(dump_dir, f"jit_{name}") if dump_dir else None,
        traffic=hlo_traffic.program_traffic(hlo),
    )


def attention_kernel(hlo: str) -> str:
    """The attention a compiled program runs, read from its optimized HLO: "splash" (the Pallas TPU kernel,
    a `tpu_custom_call` named splash_mha_*), "cudnn" (cuDNN's fused attention), else "xla" (written-out scores)."""
    if re.search(r'%splash_mha[\w.-]* = [^\n]*custom_call_target="tpu_custom_call"', hlo):
        return "splash"
    if "__cudnn$fmha" in hlo:
        return "cudnn"
    return "xla"


@dataclasses.dataclass
class Roofline:
    """The step-time lower bound of one device: its FLOPs at peak or its HBM bytes at HBM bandwidth,
    whichever is slower, and the tokens/s and MFU that bound allows."""

    step_seconds: float
    bound: str  # "compute" or "memory"
    tokens_per_second_per_chip: float
    mfu: float


def roofline(report: StepReport, chip: chips.Chip, tokens_per_step: int, num_devices: int,
             model_flops_per_step: float) -> Roofline:
    compute, memory = report.flops / chip.peak_flops, report.hbm_bytes / chip.hbm_bandwidth
    seconds = max(compute, memory)
    return Roofline(
        step_seconds=seconds, bound="compute" if compute >= memory else "memory",
        tokens_per_second_per_chip=tokens_per_step / num_devices / seconds,
        mfu=model_flops_per_step / (seconds * chip.peak_flops * num_devices),
    )


def activation_bytes(c: RobertaConfig, rows: int, length: int, scores_written: bool,
                     lane_padded: bool = False) -> int:
    """What a backward pass must keep of an encoder's activations for `rows` rows of `length` on one
    chip, in 16-bit (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    Models", section 4.1): s·b·h·(34 + 5·a·s/h) bytes per layer. The 34·s·b·h are the layer's inputs,
    projections, FFN activations, LayerNorm inputs and 1-byte dropout masks; the 5·a·s²·b are the
    attention scores and softmax (2 bytes each) and their 1-byte dropout mask. A fused attention kernel
    keeps none of them (`scores_written=False`), and without attention dropout there is no mask (4).
    The TPU kernel reads q, k, v heads-first, where a head narrower than the 128 lanes of a vector register
    is padded to fill them (`lane_padded`): its kept q, k, v take twice their 6·s·b·h.
    The MLM head and embeddings are left out: they are small beside the layers at the masked slots."""
    h, heads, layers = c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    per_layer = (34 + (6 if lane_padded else 0)) * length * rows * h
    if scores_written:
        per_score = 5 if c.attention_probs_dropout_prob > 0 else 4
        per_layer += per_score * heads * length * length * rows
    return layers * per_layer


@dataclasses.dataclass
class TrafficAccount:
    """`traffic_bytes`: what one chip must move through HBM for a microbatch of the train step and the update."""

    layers: float
    embeddings: float
    lm_head: float
    weights: float
    update: float

    @property
    def total(self) -> float:
        return self.layers + self.embeddings + self.lm_head + self.weights + self.update

    def parts(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def traffic_bytes(c: RobertaConfig, rows: int, length: int, predictions_per_row: int, param_count: int,
                  param_shards: float = 1.0, state_shards: float = 1.0, tensor: int = 1, width: int = 2,
                  accumulating: bool = False) -> TrafficAccount:
    """The bytes a train step must read and write in HBM on one chip: one microbatch of `rows` rows of
    `length`, forward and backward, and the optimizer update, when every activation is written once by
    its producer and read once by each consumer, and everything elementwise (bias, GELU, dropout with
    its mask drawn where it is used, residual adds) happens inside the matmul or normalisation that
    produces or consumes it. What a compiled step moves above this is what its fusions did not keep on
    chip.

    Per token and layer, in elements of `width` bytes (bfloat16: 2), h hidden, f FFN, t = `tensor`
    shards (q, k, v, the attention output and the FFN's [f] split over them):

      forward   QKV: read x (h), write q, k, v (3h/t); attention: read q, k, v, write o (4h/t); output
                projection: read o (h/t) and the residual x (h), write y (h); LayerNorm: read y, write x1
                (2h); FFN in: read x1 (h), write u (f/t); FFN out: read u (f/t) and x1 (h), write y2
                (h); LayerNorm: read y2, write x2 (2h).                       10h + 8h/t + 2f/t
      backward  each LayerNorm reads its input and output gradient and writes one (3h each); each
                matmul reads its output gradient twice (input and weight gradients), reads its saved
                input and writes its input gradient; the FFN's gradient through GELU reads u again;
                the attention kernel reads q, k, v, o, do and writes dq, dk, dv (8h/t); the residual
                branches add their gradients (2h).                           18h + 16h/t + 5f/t

    plus the attention kernel's float32 log-sum-exp per head (4 bytes, written once, read by the two
    backward kernels). The backward pass moves about twice the forward's bytes, as it does twice its FLOPs.

    Embeddings, per token: the word row read from the float32 table (4h bytes), the sum written and
    read back with its gradient (3h elements), and the float32 gradient added into the table's (8h bytes).
    MLM head, per prediction (`predictions_per_row`, its masked slots): the float32 logits [V/t]
    written and read by the loss (8V/t bytes), their gradient written in `width` and read by the
    decoder's two backward matmuls (3V/t elements); its dense layer and LayerNorm as a layer's (10h).
    Weights, per microbatch, P = `param_count` split `param_shards` ways: the `width` copy the matmuls
    read written once (gathered under FSDP, cast otherwise) and read forward and backward (3P/t
    elements), the float32 shard read for it (4P/s bytes), the float32 gradient written whole and
    reduced (8P/t, then 4P/s), and with `accumulating`, added into the accumulator (8P/s).
    Update, once per step: AdamW reads parameter, gradient and both moments and writes parameter and
    moments, float32 (12P/s for the parameters and gradient, 16P/`state_shards` for the moments).
    """
    h, f, t, v = c.hidden_size, c.intermediate_size, tensor, c.vocab_size
    tokens, predictions = rows * length, rows * predictions_per_row
    per_layer = width * ((10 + 18) * h + (8 + 16) * h / t + (2 + 5) * f / t) + 12 * c.num_attention_heads / t
    head = 8 * v / t + width * (3 * v / t + 10 * h)
    p, s = param_count, param_shards
    weights = width * 3 * p / t + 4 * p / s + 8 * p / t + 4 * p / s + (8 * p / s if accumulating else 0)
    return TrafficAccount(
        layers=c.num_hidden_layers * per_layer * tokens,
        embeddings=(4 + 3 * width + 8) * h * tokens,
        lm_head=head * predictions,
        weights=weights,
        update=12 * p / s + 16 * p / state_shards,
    )


def model_flops_per_step(compiled: CompiledSteps, length: int) -> float:
    """The model's training FLOPs of one global step (`metrics.flops_per_token`, PaLM's count)."""
    return metrics.flops_per_token(compiled.model.config, length) * compiled.tokens_per_step
