"""Pallas (Triton backend) kernels of :mod:`geolrm_kernels.deformable_sample`.

Layout seen by the kernels (free reshapes of the contract's arrays, no copies of the value map):

- value as (B*V*L, H*C): row = (b*V + v)*L + level start + y*w_l + x, columns h*C .. h*C + C;
- out / its cotangent as (B*V*Q, H*C);
- reference points, offsets, attention weights and the (B, V, Q) mask flattened to 1-D fp32 / int32.

Grid (H, cdiv(Q, block_q), B*V), heads fastest, so programs resident together read the same pixels' rows
of every head. One program owns block_q queries of one (b, v, h): for each of the NL*P points it computes
the four bilinear corners and gathers (block_q, C) rows with masked indexed loads. The forward keeps one
(block_q, C) fp32 accumulator and writes the output once: no intermediate is larger than the output.

The backward recomputes the samples and uses fp32 atomic adds for every gradient that several programs
share: d_value (queries overlap in pixels), d_offsets and d_attention_weights (summed over views) and
d_reference_points (summed over heads). The Pallas interpreter discharges an atomic add as a gather plus
scatter-*set* and does not accept masks, so in interpret mode the backward runs with block_q = 1 (the
addresses of one atomic call are then distinct) and adds zeros instead of masking; on GPU the same kernel
runs with masks and larger blocks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.deformable_sample import _MASKED_LOCATION, _level_starts, bilinear_corners
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Block sizes and warps: the fastest of tools/bench_deformable.py --sweep on an H100 (2026-11-25, V=21,
# 140^2+80^2, S=16384, H=16, C=48): forward block_q 16/32/64/128 -> 11.6/12.9/20.8/23.5 ms, backward
# 138/245/235/243 ms (block_q 128 with 8 warps, the others 4).
FORWARD_BLOCK_Q = 16
FORWARD_NUM_WARPS = 4
BACKWARD_BLOCK_Q = 16
BACKWARD_NUM_WARPS = 4


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _program_setup(ref_ref, mask_ref, *, dims, block_q):
    """Query indices of this program and its per-query reference point / validity."""
    v_count, q_count, _, heads, c, nl, p = dims
    h = pl.program_id(0)
    bv = pl.program_id(2)
    b = bv // v_count
    q = pl.program_id(1) * block_q + jnp.arange(block_q, dtype=jnp.int32)
    q_in = q < q_count
    qc = jnp.minimum(q, q_count - 1)
    valid = q_in & (mask_ref[bv * q_count + qc] != 0)
    ref_u = ref_ref[(bv * q_count + qc) * 2]
    ref_v = ref_ref[(bv * q_count + qc) * 2 + 1]
    point_base = ((b * q_count + qc) * heads + h) * (nl * p)
    ch = jnp.arange(_next_pow2(c), dtype=jnp.int32)
    return h, bv, q, q_in, valid, ref_u, ref_v, point_base, ch, ch < c


def _point(off_ref, attn_ref, point_index, valid, ref_u, ref_v):
    """Attention weight and normalized location of one sample point; masked queries go off-image."""
    a = jnp.where(valid, attn_ref[point_index], 0.0)
    u = jnp.where(valid, ref_u + off_ref[point_index * 2], _MASKED_LOCATION)
    v = jnp.where(valid, ref_v + off_ref[point_index * 2 + 1], _MASKED_LOCATION)
    return a, u, v


def _forward_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, out_ref, *, dims, shapes, block_q):
    v_count, q_count, length, heads, c, nl, p = dims
    h, bv, q, q_in, valid, ref_u, ref_v, point_base, ch, ch_in = _program_setup(
        ref_ref, mask_ref, dims=dims, block_q=block_q)
    # Unclipped channel columns keep the loads contiguous and 16-byte vectorizable; lanes ch >= C are masked.
    cols = jnp.broadcast_to((h * c + ch)[None, :], (block_q, ch.shape[0]))
    acc = jnp.zeros((block_q, ch.shape[0]), jnp.float32)
    for level, ((hl, wl), start) in enumerate(zip(shapes, _level_starts(shapes), strict=True)):

        def point_step(point, acc, level=level, hl=hl, wl=wl, start=start):
            a, u, v = _point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
            for pixel, inside, bilinear, _, _ in bilinear_corners(u, v, hl, wl):
                rows = jnp.broadcast_to((bv * length + start + pixel)[:, None], cols.shape)
                sample = plgpu.load(value_ref.at[rows, cols], mask=inside[:, None] & ch_in[None, :], other=0.0)
                acc += (a * bilinear)[:, None] * sample.astype(jnp.float32)
            return acc

        # A loop (not unrolled) over the points keeps compile time and code size small.
        acc = lax.fori_loop(0, p, point_step, acc)
    out_rows = jnp.broadcast_to((bv * q_count + q)[:, None], cols.shape)
    plgpu.store(out_ref.at[out_rows, cols], acc.astype(out_ref.dtype), mask=q_in[:, None] & ch_in[None, :])


def _backward_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, g_ref, _dv_in, _dr_in, _do_in, _da_in,
                     d_value_ref, d_ref_ref, d_off_ref, d_attn_ref, *, dims, shapes, block_q, interpret):
    v_count, q_count, length, heads, c, nl, p = dims
    h, bv, q, q_in, valid, ref_u, ref_v, point_base, ch, ch_in = _program_setup(
        ref_ref, mask_ref, dims=dims, block_q=block_q)
    # Unclipped channel columns keep the loads contiguous and 16-byte vectorizable; lanes ch >= C are masked.
    cols = jnp.broadcast_to((h * c + ch)[None, :], (block_q, ch.shape[0]))
    g_rows = jnp.broadcast_to((bv * q_count + jnp.minimum(q, q_count - 1))[:, None], cols.shape)
    g = plgpu.load(g_ref.at[g_rows, cols], mask=q_in[:, None] & ch_in[None, :], other=0.0)
    g = jnp.where(valid[:, None] & ch_in[None, :], g.astype(jnp.float32), 0.0)
    # Interpret mode: unmasked atomics on unclipped indices (out-of-range lanes add exact zeros, and
    # out-of-bounds scatters are dropped). GPU: masked atomics.
    q_mask = None if interpret else q_in
    # Point indices of this program's queries without clipping, for the atomic adds.
    point_base_q = ((bv // v_count * q_count + q) * heads + h) * (nl * p)
    d_ref_uv = (jnp.zeros((block_q,), jnp.float32), jnp.zeros((block_q,), jnp.float32))
    for level, ((hl, wl), start) in enumerate(zip(shapes, _level_starts(shapes), strict=True)):

        def point_step(point, d_ref_uv, level=level, hl=hl, wl=wl, start=start):
            a, u, v = _point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
            g_sample = jnp.zeros((block_q,), jnp.float32)
            g_du = jnp.zeros((block_q,), jnp.float32)
            g_dv = jnp.zeros((block_q,), jnp.float32)
            for pixel, inside, bilinear, dbdu, dbdv in bilinear_corners(u, v, hl, wl):
                rows = jnp.broadcast_to((bv * length + start + pixel)[:, None], cols.shape)
                load_mask = inside[:, None] & ch_in[None, :]
                sample = plgpu.load(value_ref.at[rows, cols], mask=load_mask, other=0.0)
                g_dot = jnp.sum(g * sample.astype(jnp.float32), axis=1)
                g_sample += bilinear * g_dot
                g_du += dbdu * g_dot
                g_dv += dbdv * g_dot
                contribution = jnp.where(inside, a * bilinear, 0.0)[:, None] * g
                plgpu.atomic_add(d_value_ref, (rows, cols), contribution,
                                 mask=None if interpret else load_mask & q_in[:, None])
            index = point_base_q + level * p + point
            d_u = a * g_du
            d_v = a * g_dv
            plgpu.atomic_add(d_attn_ref, (index,), g_sample, mask=q_mask)
            plgpu.atomic_add(d_off_ref, (index * 2,), d_u, mask=q_mask)
            plgpu.atomic_add(d_off_ref, (index * 2 + 1,), d_v, mask=q_mask)
            return d_ref_uv[0] + d_u, d_ref_uv[1] + d_v

        d_ref_uv = lax.fori_loop(0, p, point_step, d_ref_uv)
    ref_index = (bv * q_count + q) * 2
    plgpu.atomic_add(d_ref_ref, (ref_index,), d_ref_uv[0], mask=q_mask)
    plgpu.atomic_add(d_ref_ref, (ref_index + 1,), d_ref_uv[1], mask=q_mask)


def _flat_inputs(value, reference_points, offsets, attention_weights, mask):
    b, v, length, heads, c = value.shape
    return (value.reshape(b * v * length, heads * c),
            reference_points.astype(jnp.float32).reshape(-1),
            offsets.astype(jnp.float32).reshape(-1),
            attention_weights.astype(jnp.float32).reshape(-1),
            mask.astype(jnp.int32).reshape(-1))


def _dims(value, offsets):
    b, v, length, heads, c = value.shape
    q = offsets.shape[1]
    return (v, q, length, heads, c, offsets.shape[3], offsets.shape[4])


def forward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, *, interpret=False,
            block_q=None, num_warps=None):
    """(B, V, Q, H, C) output in value.dtype; mask is (B, V, Q) bool."""
    b, v, length, heads, c = value.shape
    dims = _dims(value, offsets)
    q = dims[1]
    block_q = block_q or min(FORWARD_BLOCK_Q, _next_pow2(q))
    num_warps = num_warps or FORWARD_NUM_WARPS
    kernel = functools.partial(_forward_kernel, dims=dims, shapes=tuple(spatial_shapes), block_q=block_q)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b * v * q, heads * c), value.dtype),
        grid=(heads, pl.cdiv(q, block_q), b * v),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="deformable_sample_fwd",
    )(*_flat_inputs(value, reference_points, offsets, attention_weights, mask))
    return out.reshape(b, v, q, heads, c)


def backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, *, interpret=False,
             block_q=None, num_warps=None):
    """Gradients (d_value, d_reference_points, d_offsets, d_attention_weights) in the inputs' dtypes."""
    b, v, length, heads, c = value.shape
    dims = _dims(value, offsets)
    q = dims[1]
    if interpret:
        block_q = 1
    block_q = block_q or min(BACKWARD_BLOCK_Q, _next_pow2(q))
    num_warps = num_warps or BACKWARD_NUM_WARPS
    kernel = functools.partial(_backward_kernel, dims=dims, shapes=tuple(spatial_shapes), block_q=block_q,
                               interpret=interpret)
    zeros = (jnp.zeros((b * v * length, heads * c), jnp.float32),
             jnp.zeros((reference_points.size,), jnp.float32),
             jnp.zeros((offsets.size,), jnp.float32),
             jnp.zeros((attention_weights.size,), jnp.float32))
    d_value, d_ref, d_off, d_attn = pl.pallas_call(
        kernel,
        out_shape=tuple(jax.ShapeDtypeStruct(z.shape, z.dtype) for z in zeros),
        grid=(heads, pl.cdiv(q, block_q), b * v),
        input_output_aliases={6: 0, 7: 1, 8: 2, 9: 3},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="deformable_sample_bwd",
    )(*_flat_inputs(value, reference_points, offsets, attention_weights, mask),
      g.reshape(b * v * q, heads * c), *zeros)
    return (d_value.reshape(value.shape).astype(value.dtype),
            d_ref.reshape(reference_points.shape).astype(reference_points.dtype),
            d_off.reshape(offsets.shape).astype(offsets.dtype),
            d_attn.reshape(attention_weights.shape).astype(attention_weights.dtype))
