"""HBM traffic read from optimized HLO (`train.hlo_traffic`): memory spaces, asynchronous copies and
slices, loop bodies counted once, in-place updates, and the grouping by JAX operation."""

import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.train import hlo_traffic

# A TPU-style module: a prefetch into VMEM (S(1)), a loop whose body hands a VMEM buffer from one fusion to
# the next, an in-place slice update and an asynchronous slice.
MODULE = """HloModule m, entry_computation_layout={()->()}

%fused_add (p0: f32[256,128]) -> f32[256,128] {
  %p0 = f32[256,128]{1,0} parameter(0)
  ROOT %add = f32[256,128]{1,0} add(%p0, %p0)
}

%fused_dus (b: f32[1024,128], u: f32[8,128], i: s32[]) -> f32[1024,128] {
  %b = f32[1024,128]{1,0} parameter(0)
  %u = f32[8,128]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = f32[1024,128]{1,0} dynamic-update-slice(%b, %u, %i, %zero)
}

%slice_computation (s: f32[1024,128]) -> f32[64,128] {
  %s = f32[1024,128]{1,0} parameter(0)
  ROOT %slice = f32[64,128]{1,0} slice(%s), slice={[0:64], [0:128]}
}

%body (state: (s32[], f32[256,128])) -> (s32[], f32[256,128]) {
  %state = (s32[], f32[256,128]{1,0}) parameter(0)
  %i.0 = s32[] get-tuple-element(%state), index=0
  %x = f32[256,128]{1,0} get-tuple-element(%state), index=1
  %y = f32[256,128]{1,0:S(1)} fusion(%x), kind=kLoop, calls=%fused_add, metadata={op_name="jit(s)/layer_3/add"}
  %z = f32[256,128]{1,0} fusion(%y), kind=kLoop, calls=%fused_add, metadata={op_name="jit(s)/layer_11/add"}
  ROOT %t = (s32[], f32[256,128]{1,0}) tuple(%i.0, %z)
}

%cond (state.1: (s32[], f32[256,128])) -> pred[] {
  %state.1 = (s32[], f32[256,128]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i.1, %n), direction=LT
}

ENTRY %main (a: f32[256,128], big: f32[1024,128], upd: f32[8,128], k: s32[]) -> (f32[256,128]) {
  %a = f32[256,128]{1,0} parameter(0)
  %big = f32[1024,128]{1,0} parameter(1)
  %upd = f32[8,128]{1,0} parameter(2)
  %k = s32[] parameter(3)
  %cs = (f32[256,128]{1,0:S(1)}, f32[256,128]{1,0}, u32[]{:S(2)}) copy-start(%a)
  %cd = f32[256,128]{1,0:S(1)} copy-done(%cs)
  %init = (s32[], f32[256,128]{1,0}) tuple(%k, %a)
  %w = (s32[], f32[256,128]{1,0}) while(%init), condition=%cond, body=%body
  %out = f32[256,128]{1,0} get-tuple-element(%w), index=1
  %updated = f32[1024,128]{1,0} fusion(%big, %upd, %k), output_to_operand_aliasing={{}: (0, {})}, calls=%fused_dus
  %ss = ((f32[1024,128]{1,0}), f32[64,128]{1,0:S(1)}, s32[]{:S(2)}) async-start(%big), calls=%slice_computation
  %sd = f32[64,128]{1,0:S(1)} async-done(%ss), calls=%slice_computation
  ROOT %r = (f32[256,128]{1,0}, f32[1024,128]{1,0}, f32[64,128]{1,0:S(1)}) tuple(%out, %updated, %sd)
}
"""

ARRAY = 256 * 128 * 4  # f32[256,128]


def test_each_instruction_counts_what_it_moves_through_hbm():
    traffic = hlo_traffic.program_traffic(MODULE)
    moved = {i.name: (i.hbm_read, i.hbm_written, i.on_chip) for i in traffic.instructions}
    assert moved == {
        "cs": (ARRAY, 0, 0),  # the prefetch reads HBM; its VMEM copy lands at the done
        "cd": (0, 0, ARRAY),
        "y": (ARRAY, 0, ARRAY),  # the body, once: reads HBM, writes VMEM
        "z": (0, ARRAY, ARRAY),  # reads that VMEM buffer, writes HBM
        "lt": (8, 1, 0),  # the loop condition compares two int32 scalars
        "updated": (8 * 128 * 4, 8 * 128 * 4, 0),  # in place: the 8 rows, not the 1024
        "ss": (64 * 128 * 4, 0, 0),  # an asynchronous slice reads its 64 rows
        "sd": (0, 0, 64 * 128 * 4),
    }
    assert traffic.hbm_bytes == 3 * ARRAY + 9 + 2 * 8 * 128 * 4 + 64 * 128 * 4
    assert traffic.on_chip_bytes == 3 * ARRAY + 64 * 128 * 4


def test_the_same_operation_of_every_layer_adds_up_in_one_row():
    top = hlo_traffic.program_traffic(MODULE).top(3)
    assert top[0] == ("layer_*/add", 2, 2 * ARRAY)
    # An instruction without metadata goes by its operand's, or by its opcode when none has any.
    assert top[1] == ("(copy-start)", 1, ARRAY)
    assert top[2] == ("(async-start)", 1, 64 * 128 * 4)


def test_array_bytes_by_memory_space():
    assert hlo_traffic.array_bytes("bf16[8,512,768]{2,1,0:T(8,128)(2,1)}") == {0: 8 * 512 * 768 * 2}
    assert hlo_traffic.array_bytes("(pred[4,4]{1,0:S(1)}, s32[2]{0}, u32[]{:S(2)})") == {1: 16, 0: 8, 2: 4}


def test_a_program_compiled_here_moves_its_operands_and_results():
    """On the CPU every buffer is in main memory: one fusion reads x and writes the result."""
    x = jnp.ones((512, 384), jnp.float32)
    compiled = jax.jit(lambda x: jnp.sin(x) * 2 + 1).lower(x).compile()
    traffic = hlo_traffic.program_traffic(compiled.as_text())
    assert traffic.hbm_bytes == 2 * x.nbytes and traffic.on_chip_bytes == 0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert np.isclose(traffic.hbm_bytes, cost["bytes accessed"])  # XLA's count agrees where nothing is on chip
