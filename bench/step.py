"""Pretraining-step throughput: our jitted step against HF `transformers` PyTorch, same shapes.

    python bench/step.py                                   # base and large, lengths 512 and 128
    python bench/step.py --models base --lengths 512 --batches 64 --peer compile

Both sides run the whole step: dynamic masking of 15% of the tokens (ours on device, inside the
step; the peer's masks are made beforehand and not timed), forward, backward and AdamW, with
bf16 compute, hidden dropout 0.1 and attention-probability dropout 0 (the fused attention
kernels have none). Each (side, model, length, batch) runs in its own process so that peak
memory is its own and the two frameworks never share the GPU.

MFU counts 6 x (every matmul parameter, the full vocabulary projection included) + the
attention term, per token (`metrics.flops_per_token`), over the device's peak bf16 FLOP/s
(989 TFLOP/s for an H100), the same formula for both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DEFAULT_BATCHES = {"base": "32,64,128", "large": "16,32"}


def timed(step, warmup: int, steps: int) -> list[float]:
    """Wall time of each of `steps` calls to `step()` (which must block until done)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


class SpecialIds:
    """What `pretrain.mlm_steps` reads of a tokenizer, without vocabulary files: roberta-base's special ids
    (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=50264), every other id below `vocab_size` a token."""

    mask_token_id = 50264
    all_special_ids = (0, 1, 2, 3, 50264)

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def get_vocab(self) -> dict[str, int]:
        return {str(i): i for i in range(self.vocab_size)}


def build_ours(model_name: str, length: int, batch: int, args):
    """Our jitted MLM train step on one random batch: returns `step()`, which runs one step and
    blocks until it is done (or, with `args.mode` "grad"/"forward", only that part of it).

    The step is train.py's: `pretrain.mlm_steps` with the default config's masking, optimizer and
    logical-axis rules, compiled by `runtime.jit_train_step` on a data-parallel mesh of every device."""

    import jax
    import jax.numpy as jnp
    import numpy as np

    from roberta_jax.model.config import preset
    from roberta_jax.model.heads import RobertaForMaskedLM
    from roberta_jax.train import objectives, optimizer, pretrain, runtime, sharding, steps
    from roberta_jax.train.config import default_config

    jax.config.update("jax_default_prng_impl", args.prng)
    vocab = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    arch = preset(model_name, attention_probs_dropout_prob=0.0, hidden_dropout_prob=args.hidden_dropout, **vocab)
    model = RobertaForMaskedLM(arch, dtype=jnp.bfloat16, implementation=args.attention or None, remat=args.remat)
    config = default_config()
    tx, schedule = optimizer.make_optimizer(config.optimizer)
    rules = sharding.axis_rules(config.logical_axis_rules)
    mesh = sharding.make_mesh(dict(config.mesh))
    state, shardings = steps.create_train_state(model, tx, mesh, config.seed, rules)
    tokenizer = SpecialIds(arch.vocab_size)
    train_fn, _ = pretrain.mlm_steps(config, model, tokenizer, tx, schedule)
    step_fn = runtime.jit_train_step(train_fn, shardings, mesh, rules)
    ids = np.random.default_rng(0).integers(4, 50260, (batch, length), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    batch_arrays = {"input_ids": jax.device_put(ids, sharding.batch_sharding(mesh, rules))}
    holder = {"state": state}

    def step():
        holder["state"], m = step_fn(holder["state"], batch_arrays)
        m["train/loss"].block_until_ready()

    if args.mode == "step":
        return step
    # Parts of the step alone: where the time goes. The masks are mlm_steps's, made once, untimed.
    mask_fn = pretrain.mask_function(config, tokenizer, arch.vocab_size)
    loss_fn = objectives.mlm_loss(model)
    prepared = jax.jit(objectives.mlm_prepare(mask_fn))(jax.random.key(1), batch_arrays)
    rng = None if args.mode == "forward" else jax.random.key(2)
    part = jax.jit(loss_fn if args.mode == "forward" else jax.grad(lambda p, b, r: loss_fn(p, b, r)[0]))
    params = holder["state"].params

    def part_step():
        jax.block_until_ready(part(params, prepared, rng))

    return part_step


def run_ours(model_name: str, length: int, batch: int, args) -> dict:
    import jax

    step = build_ours(model_name, length, batch, args)
    times = timed(step, args.warmup, args.steps)
    stats = jax.devices()[0].memory_stats() or {}
    return {"times": times, "peak_bytes": stats.get("peak_bytes_in_use", 0), "device": jax.devices()[0].device_kind}


def run_peer(model_name: str, length: int, batch: int, args) -> dict:
    import torch
    import transformers

    from roberta_jax.model.config import preset

    arch = preset(model_name).to_dict()
    arch = {k: arch[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                 "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps")}
    config = transformers.RobertaConfig(**arch, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)
    model = transformers.RobertaForMaskedLM._from_config(config, attn_implementation="sdpa").cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=True)
    forward = torch.compile(model) if args.peer == "compile" else model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 50260, (batch, length), generator=gen)
    ids[:, 0], ids[:, -1] = 0, 2
    chosen = torch.rand(batch, length, generator=gen) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, -100)).cuda()
    inputs = torch.where(chosen, torch.full_like(ids, 50264), ids).cuda()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(input_ids=inputs, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    torch.cuda.reset_peak_memory_stats()
    times = timed(step, args.warmup, args.steps)
    return {"times": times, "peak_bytes": torch.cuda.max_memory_allocated(),
            "device": torch.cuda.get_device_name()}


def one(args) -> None:
    side, model_name, length, batch = args.one[0], args.one[1], int(args.one[2]), int(args.one[3])
    runner = run_ours if side == "ours" else run_peer
    try:
        result = runner(model_name, length, batch, args)
    except Exception as err:  # noqa: BLE001 - out of memory and friends are reported, not fatal
        result = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    print("RESULT " + json.dumps(result), flush=True)


def summarise(model_name: str, length: int, batch: int, result: dict) -> dict:
    from roberta_jax.model.config import preset
    from roberta_jax.train.metrics import flops_per_token, peak_flops_by_kind

    if "error" in result:
        return {"error": result["error"]}
    step_time = statistics.median(result["times"])
    tokens = batch * length
    peak = peak_flops_by_kind(result["device"])
    mfu = flops_per_token(preset(model_name), length) * tokens / step_time / peak if peak else float("nan")
    return {"step_ms": 1e3 * step_time, "tokens_per_sec": tokens / step_time, "mfu": mfu,
            "peak_gib": result["peak_bytes"] / 2**30, "device": result["device"]}


def add_step_options(parser: argparse.ArgumentParser) -> None:
    """The options `build_ours` reads (also `bench/profile_step.py`'s)."""
    parser.add_argument("--attention", default="cudnn", help="jax.nn.dot_product_attention implementation; '' = auto")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--prng", default="threefry2x32", help="jax_default_prng_impl for our masks and dropout")
    parser.add_argument("--hidden-dropout", type=float, default=0.1)
    parser.add_argument("--mode", choices=["step", "grad", "forward"], default="step",
                        help="time the whole step, or only its forward+backward, or only its forward (ours)")
    parser.add_argument("--vocab-size", type=int, default=0, help="instead of the preset's (ours only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="base,large")
    parser.add_argument("--lengths", default="512,128")
    parser.add_argument("--batches", default="", help="comma-separated; default per model: " + str(DEFAULT_BATCHES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peer", choices=["compile", "eager", "none"], default="compile")
    add_step_options(parser)
    parser.add_argument("--xla-flags", default="", help="added to XLA_FLAGS for our side, e.g. to measure one flag")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)

    rows = []
    print(f"{'model':6} {'len':>4} {'batch':>5} {'side':>6} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>8}")
    sides = ["ours"] + ([] if args.peer == "none" else ["peer"])
    for model_name in args.models.split(","):
        for length in (int(x) for x in args.lengths.split(",")):
            for batch in (int(x) for x in (args.batches or DEFAULT_BATCHES[model_name]).split(",")):
                results = {}
                for side in sides:
                    cmd = [sys.executable, __file__, "--one", side, model_name, str(length), str(batch),
                           "--steps", str(args.steps), "--warmup", str(args.warmup), "--peer", args.peer,
                           "--attention", args.attention, "--prng", args.prng,
                           "--hidden-dropout", str(args.hidden_dropout), "--mode", args.mode,
                           "--vocab-size", str(args.vocab_size)]
                    cmd += ["--remat"] if args.remat else []
                    env = dict(os.environ)
                    if side == "ours" and args.xla_flags:
                        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                    raw = json.loads(line[7:]) if line else {"error": (out.stderr or out.stdout)[-300:]}
                    results[side] = summarise(model_name, length, batch, raw)
                    r = results[side]
                    if "error" in r:
                        print(f"{model_name:6} {length:>4} {batch:>5} {side:>6}  {r['error']}")
                    else:
                        print(f"{model_name:6} {length:>4} {batch:>5} {side:>6} {r['step_ms']:9.1f} "
                              f"{r['tokens_per_sec']:10,.0f} {r['mfu']:6.1%} {r['peak_gib']:8.1f}", flush=True)
                if "peer" in results and "error" not in results["peer"] and "error" not in results["ours"]:
                    ratio = results["ours"]["tokens_per_sec"] / results["peer"]["tokens_per_sec"]
                    print(f"{'':17} ours / peer ({args.peer}): {ratio:.2f}x", flush=True)
                rows.append({"model": model_name, "length": length, "batch": batch, **results})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
