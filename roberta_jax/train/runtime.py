"""The runtime every entry point shares: pretraining, fine-tuning and the benchmarks build it the same way.

    with Runtime(config, workdir, workdir_files.TRAIN_CONFIG,          # distributed, config checks, the
                 check_config=validate.pretraining, contract=...) as rt:   # workdir's lock and contract, mesh
        model = RobertaForMaskedLM(arch, **rt.model_kwargs())
        state, shardings = rt.create_state(model, tx)                  # built in its sharding
        train_step, eval_step = rt.compile(train_fn, eval_fn, shardings)
        state, step = rt.resume(state, batches)                        # newest readable checkpoint, writer
        result = rt.train(state, train_step, batches, rt.loop_config(...), evaluate)
        rt.export(storage.join(rt.workdir, "hf"), model, result.state.params, tokenizer)

It reads the config fields both entry points have (`train.config.add_runtime_fields`): `distributed`,
`mesh`, `logical_axis_rules`, `dtype`, `attention_implementation`, `remat`, `checkpoint`,
`log_every_steps`, `eval_every_steps`, `max_nonfinite_steps`, `progress`.

Eval steps have one form: `eval_step(params, batch, batch_index) -> (sums, outputs)`, where `sums` holds
"loss_sum", "count" and "correct" and `outputs` is whatever per-row arrays the caller's metrics read.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from roberta_jax import storage
from roberta_jax.data.batches import to_global
from roberta_jax.model import hf_io
from roberta_jax.model.heads import architecture_name
from roberta_jax.train import checkpoint, compilation_cache, loop, metrics, preemption, sharding, steps, validate
from roberta_jax.train import workdir as workdir_files

log = logging.getLogger("absl")  # absl sets up the handlers

EVAL_SUMS = ("loss_sum", "count", "correct")


def initialize_distributed(dist) -> None:
    """`jax.distributed.initialize` from a config's `distributed` section when `dist.initialize` is set
    (multi-host runs; empty or negative fields let JAX detect them from the cluster)."""
    if dist.initialize:
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address or None,
            num_processes=dist.num_processes or None,
            process_id=None if dist.process_id < 0 else dist.process_id,
        )


def write_record(workdir: str, config, record: str) -> None:
    """Writes the resolved `config` into `workdir` as the JSON file `record`: the record of what ran."""
    storage.write_text(storage.join(workdir, record), config.to_json_best_effort(indent=2, sort_keys=True))


def model_kwargs(config, mesh: Mesh | None = None) -> dict[str, Any]:
    """The module attributes a config sets beside the architecture: compute dtype, attention, remat; with the
    `mesh` the steps run on, attention's placement (its platform picks the kernel, which runs per shard)."""
    kwargs = {"dtype": jnp.dtype(config.dtype), "implementation": config.attention_implementation or None,
              "remat": config.remat}
    if mesh is not None:
        kwargs["placement"] = sharding.attention_placement(mesh, sharding.axis_rules(config.logical_axis_rules))
    return kwargs


def with_axis_rules(fn: Callable, mesh: Mesh, rules: sharding.Rules) -> Callable:
    """`fn` traced under `mesh` and the logical-axis `rules`, so the layers' activation constraints
    (`nn.with_logical_constraint`: [batch, length, embed] split over the batch axes) bind: without them
    XLA may follow the FSDP-sharded kernels and hold whole-batch activations on every device."""

    @functools.wraps(fn)
    def constrained(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return constrained


def jit_train_step(train_fn: Callable, state_shardings: Any, mesh: Mesh, rules: sharding.Rules) -> Callable:
    """`train_fn(state, batch) -> (state, metrics)` compiled with the state in its sharding (donated:
    updated in place), the batch split over the batch axes and the metrics replicated."""
    return jax.jit(
        with_axis_rules(train_fn, mesh, rules),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def jit_eval_step(eval_fn: Callable, state_shardings: Any, mesh: Mesh, rules: sharding.Rules) -> Callable:
    """`eval_fn(params, batch, batch_index) -> (sums, outputs)` compiled, its results replicated."""
    return jax.jit(
        with_axis_rules(eval_fn, mesh, rules),
        in_shardings=(state_shardings.params, sharding.batch_sharding(mesh, rules), None),
        out_shardings=sharding.replicated(mesh),
    )


def gather_params(params: Any) -> Any:
    """The whole params on every host: a multi-host run's shards are all-gathered first."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


def export_hf(directory: str, model, params: Any, tokenizer=None) -> list[str]:
    """The params gathered from every host, written by process 0 as an HF directory (`hf_io.save_hf`), local or
    on `gs://`. Written aside and swapped in (`storage.staged_dir`), so an interrupted export leaves the previous
    one whole, or on object storage a whole copy and a directory that readers refuse. Returns (and logs) the
    names of the weights the HF class has not (the next-sentence head): they stay in the checkpoints only."""
    params = gather_params(params)
    if jax.process_index() != 0:
        return []
    # A signal waits for the swap: the export is whole or the previous one stays (the signal then ends the run).
    with preemption.deferred(), storage.staged_dir(directory) as staging:
        left_out = hf_io.save_hf(staging, model, params, tokenizer=tokenizer)
    if left_out:
        log.info("HF export %s: left out %d weights that %s has not (kept in the checkpoints): %s", directory,
                 len(left_out), architecture_name(model), ", ".join(left_out))
    return left_out


class Runtime:
    """One run's distributed setup, workdir, mesh, sharding rules, metric writer and checkpointer.

    Use it as a context manager: leaving it waits for the last checkpoint and closes the writers.
    """

    def __init__(self, config, workdir: str, record: str, check_config: Callable = validate.runtime,
                 contract: dict | None = None):
        """Checks the config (`check_config(config, num_devices, num_hosts)`), takes the workdir's lock (process
        0) and checks the workdir's `contract` (`workdir.check_contract`) before anything is written."""
        initialize_distributed(config.distributed)
        compilation_cache.enable(config.compilation_cache_dir)
        check_config(config, jax.device_count(), jax.process_count())
        self.config, self.record, self.contract = config, record, contract
        self.is_main = jax.process_index() == 0
        self.workdir = storage.resolve(workdir)
        storage.check_access(self.workdir, write=self.is_main)
        storage.makedirs(self.workdir)
        self.lock = workdir_files.Lock(self.workdir)
        if self.is_main:
            self.lock.acquire()
        try:
            if contract is not None:
                workdir_files.check_contract(self.workdir, contract)
            self.rules = sharding.axis_rules(config.logical_axis_rules)
            self.mesh = sharding.make_mesh(dict(config.mesh))
        except BaseException:
            self.lock.release()
            raise
        self.writer: metrics.MetricWriter | None = None
        self.checkpointer: checkpoint.Checkpointer | None = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            if self.checkpointer is not None:
                if kind is None:
                    self.checkpointer.close()
                else:  # already failing: the one error to report is that one
                    with contextlib.suppress(Exception):
                        self.checkpointer.close()
            if self.writer is not None:
                self.writer.close()
        finally:
            self.lock.release()

    def fix_contract(self, contract: dict) -> None:
        """Checks the workdir against a `contract` known only once the data is read (fine-tuning's labels), as
        `__init__` does with its own: before the checkpoints and logs are opened. Written as training starts."""
        if self.checkpointer is not None:
            raise RuntimeError("Runtime.fix_contract checks the workdir before resume opens it")
        workdir_files.check_contract(self.workdir, contract)
        self.contract = contract

    def model_kwargs(self) -> dict[str, Any]:
        return model_kwargs(self.config, self.mesh)

    def create_state(self, model, tx) -> tuple[Any, Any]:
        """(state, state_shardings): params and optimizer state initialised in their sharding."""
        state, shardings = steps.create_train_state(model, tx, self.mesh, self.config.seed, self.rules)
        num_params = sum(x.size for x in jax.tree.leaves(state.params))
        log.info("mesh %s, %s parameters", dict(self.mesh.shape), f"{num_params:,}")
        return state, shardings

    def compile(self, train_fn: Callable, eval_fn: Callable, state_shardings: Any) -> tuple[Callable, Callable]:
        """The jitted (train_step, eval_step) on this run's mesh (`jit_train_step`, `jit_eval_step`)."""
        return (jit_train_step(train_fn, state_shardings, self.mesh, self.rules),
                jit_eval_step(eval_fn, state_shardings, self.mesh, self.rules))

    def put(self, batch: dict) -> dict[str, jax.Array]:
        """A host-local batch as global arrays split over the batch axes of the mesh."""
        return to_global(batch, self.mesh, sharding.batch_axes(self.rules))

    def resume(self, state: Any, batches) -> tuple[Any, int]:
        """Opens the workdir's checkpoints; (state, step) of the newest readable one with `batches` moved to
        its saved position, or (`state`, 0) when there is none."""
        c = self.config.checkpoint
        self.checkpointer = checkpoint.Checkpointer(
            storage.join(self.workdir, workdir_files.CHECKPOINTS), c.every_steps, c.keep, c.asynchronous
        )
        state, step = self.checkpointer.resume(state, batches)
        if step:
            log.info("resumed from step %d", step)
        self.writer = metrics.MetricWriter(self.workdir, resume_step=step)
        return state, step

    def loop_config(self, total_steps: int, tokens_per_step: int, flops_per_step: float) -> loop.LoopConfig:
        c = self.config
        return loop.LoopConfig(
            total_steps=total_steps, tokens_per_step=tokens_per_step, flops_per_step=flops_per_step,
            log_every_steps=c.log_every_steps, eval_every_steps=c.eval_every_steps,
            max_nonfinite_steps=c.max_nonfinite_steps, progress=c.progress,
        )

    def train(self, state: Any, train_step: Callable, batches, loop_config: loop.LoopConfig,
              evaluate: Callable[[Any, int], dict[str, float]] | None,
              callbacks: Sequence[loop.IntervalCallback] = ()) -> loop.LoopResult:
        """The loop (`loop.run`) from `state.step + 1`, checkpointing into the workdir (`resume` first), with
        the `callbacks` (downstream probes) between steps.
        The workdir is fixed to the contract and the config recorded as the first step starts; a run
        stopped by a signal raises `loop.Interrupted` once its checkpoint is saved."""
        if self.checkpointer is None:
            raise RuntimeError("Runtime.resume opens the checkpoints; call it before train")
        if self.is_main:
            if self.contract is not None:
                workdir_files.write_contract(self.workdir, self.contract)
            write_record(self.workdir, self.config, self.record)
        result = loop.run(state, train_step, batches, self.put, loop_config, self.checkpointer, self.writer,
                          evaluate, callbacks)
        if result.stopped_by_signal:
            raise loop.Interrupted(f"interrupted at step {int(result.state.step)}, checkpoint saved in "
                                   f"{self.checkpointer.directory}; run the same command to resume")
        return result

    def evaluate(self, eval_step: Callable, params: Any, batches: Iterable[dict],
                 max_batches: int | None = None) -> tuple[dict[str, float], list]:
        """Runs `eval_step` over `batches` (the first `max_batches`): the summed `EVAL_SUMS` (and any other sums
        the step returns) as floats and the list of per-batch outputs, on the host."""
        sums, outputs = dict.fromkeys(EVAL_SUMS, 0.0), []
        for index, batch in enumerate(itertools.islice(batches, max_batches)):
            batch_sums, out = jax.device_get(eval_step(params, self.put(batch), index))
            sums = {k: sums.get(k, 0.0) + float(v) for k, v in batch_sums.items()}
            outputs.append(out)
        return sums, outputs
