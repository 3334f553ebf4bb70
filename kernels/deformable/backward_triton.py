"""Pallas (Triton) backward kernels of :mod:`geolrm_kernels.deformable` (layout: ``triton_common``).

Two kernels, both taking their queries in the query order:

- d_value (grid (H, Q blocks, B*V), one view per program, no value reads): per (view, level), the bilinear
  weights of the corners that fall in a wy x wx pixel window (origin: the block's mean reference pixel at the
  window's centre, clamped into the map) accumulate as products of tent functions,
  ``W[pixel, query] += a * max(0, 1 - |j - x|) * max(0, 1 - |i - y|)`` (float ops, no corner indices), in a
  (wy*wx, block_q) fp32 register matrix; then ``d_window = W @ g`` (tf32x3 tensor-core dot: fp32-accurate) is
  added with one atomic per touched pixel row. Corners outside the window add their (block_q, C) rows with
  per-sample atomics, so the result is exact for any input and only the speed depends on locality. The atomics
  are fp32 adds with relaxed memory ordering (``geolrm_kernels.atomics``).
- point gradients (grid (H, Q blocks, B), a loop over the views recomputing the samples; no atomics):
  d_attention_weights and d_offsets (shared by the views) accumulate in (block_q, NL*P) registers and are stored
  once; d_reference_points is stored per (view, head) and summed over heads outside the kernel.

Interpret mode: the Pallas interpreter discharges an atomic add as gather + scatter-*set* (duplicate addresses
in one call lose updates) and takes no mask, so per-sample atomics add one query's row per call (distinct
addresses) with exact zeros where the GPU masks; window rows are distinct pixels. block_q divides Q there
(no padded slots, whose stores the interpreter cannot mask).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.atomics import gradient_atomic_add
from geolrm_kernels.deformable import triton_common as tc
from geolrm_kernels.deformable.config import DEFAULT_CONFIG, DeformableConfig
from geolrm_kernels.deformable.reference import bilinear_corners, level_starts
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def window_shape(level_shape, size):
    """(wy, wx) of a level's window: powers of two, at most ``size`` and at most the map."""
    return min(size, _floor_pow2(level_shape[0])), min(size, _floor_pow2(level_shape[1]))


def _view_cotangent(mask_ref, ref_ref, g_ref, *, bv, q_count, q_in, qc, lanes):
    """Per query of view bv: validity, reference (u, v), and the cotangent rows of each lane chunk
    ((block_q, width) fp32, zero for invalid queries and padded lanes)."""
    valid = q_in & (mask_ref[bv * q_count + qc] != 0)
    ref_u = ref_ref[(bv * q_count + qc) * 2]
    ref_v = ref_ref[(bv * q_count + qc) * 2 + 1]
    gs = []
    for cols, lane in lanes:
        g_rows = jnp.broadcast_to((bv * q_count + qc)[:, None], cols.shape)
        g = plgpu.load(g_ref.at[g_rows, cols], mask=tc.lane_mask(q_in, lane, cols.shape), other=0.0)
        gs.append(jnp.where(tc.lane_mask(valid, lane, cols.shape), g.astype(jnp.float32), 0.0))
    return valid, ref_u, ref_v, tuple(gs)


# ----------------------------------------------------------------------------------------------------------
# d_value
# ----------------------------------------------------------------------------------------------------------
def _value_grad_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, g_ref, _zeros_ref, d_value_ref,
                       *, dims, shapes, windows, block_q, chunks, interpret, atomic_add, precision):
    """One program: block_q queries (consecutive in the query order) of one (b, v, h). _zeros_ref is aliased to
    d_value_ref (the accumulator's initial zeros)."""
    v_count, q_count, length, heads, c, nl, p = dims
    h, bv = pl.program_id(0), pl.program_id(2)
    b = bv // v_count
    q, q_in, qc = tc.program_queries(order_ref, b, q_count, block_q)
    point_base = ((b * q_count + qc) * heads + h) * (nl * p)
    lanes = tc.chunk_lanes(h, c, chunks, block_q)  # per lane chunk: (cols, lane mask or None)

    def add_samples(pixel_rows, coef, gs, add):
        """d_value[pixel_rows] += coef * g for the (block_q,) queries where ``add``, chunk by chunk."""
        coef = jnp.where(add, coef, 0.0)[:, None]
        for (cols, lane), g in zip(lanes, gs, strict=True):
            rows = jnp.broadcast_to(pixel_rows[:, None], cols.shape)
            contribution = coef * g
            if interpret:  # one query per call: distinct addresses; zeros instead of masks
                for i in range(block_q):
                    atomic_add(d_value_ref, (rows[i:i + 1], cols[i:i + 1]), contribution[i:i + 1])
            else:
                atomic_add(d_value_ref, (rows, cols), contribution, mask=tc.lane_mask(add & q_in, lane, cols.shape))

    valid, ref_u, ref_v, gs = _view_cotangent(mask_ref, ref_ref, g_ref, bv=bv, q_count=q_count, q_in=q_in, qc=qc,
                                              lanes=lanes)
    count = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
    mean_u = jnp.sum(jnp.where(valid, ref_u, 0.0)) / count
    mean_v = jnp.sum(jnp.where(valid, ref_v, 0.0)) / count
    for level, ((hl, wl), start, (wy, wx)) in enumerate(zip(shapes, level_starts(shapes), windows, strict=True)):
        # Window origin: the block's mean reference pixel at the window's centre, clamped into the map.
        ox = jnp.clip(jnp.floor(jnp.clip(mean_u, -1.0, 2.0) * wl - 0.5).astype(jnp.int32) - wx // 2 + 1, 0, wl - wx)
        oy = jnp.clip(jnp.floor(jnp.clip(mean_v, -1.0, 2.0) * hl - 0.5).astype(jnp.int32) - wy // 2 + 1, 0, hl - wy)
        local = jnp.arange(wy * wx, dtype=jnp.int32)[:, None]  # window pixel, row-major
        window_x = (ox + local % wx).astype(jnp.float32)  # (wy*wx, 1)
        window_y = (oy + local // wx).astype(jnp.float32)

        def point_step(point, weights, level=level, hl=hl, wl=wl, start=start, wy=wy, wx=wx, ox=ox, oy=oy,
                       window_x=window_x, window_y=window_y):
            a, u, v = tc.point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
            # The bilinear weight of pixel (i, j) is the product of tents max(0, 1 - |i - x|), so the window
            # needs no corner indices (and no one-hot compare/select per corner).
            tent_x = jnp.maximum(1.0 - jnp.abs(window_x - (u * wl - 0.5)[None, :]), 0.0) * a[None, :]
            weights = tc.fused_multiply_add(jnp.maximum(1.0 - jnp.abs(window_y - (v * hl - 0.5)[None, :]), 0.0),
                                            tent_x, weights, interpret=interpret)
            # Which corners fall in the window, from floor(x) and floor(y) (as bilinear_corners computes them)
            # in the float domain: no integer division of pixel indices per corner.
            x0 = jnp.floor(jnp.clip(u * wl - 0.5, -2.0, wl + 1.0)) - ox.astype(jnp.float32)
            y0 = jnp.floor(jnp.clip(v * hl - 0.5, -2.0, hl + 1.0)) - oy.astype(jnp.float32)
            in_x = ((x0 >= 0.0) & (x0 < wx), (x0 >= -1.0) & (x0 < wx - 1))  # corner x0, x0 + 1
            in_y = ((y0 >= 0.0) & (y0 < wy), (y0 >= -1.0) & (y0 < wy - 1))
            corner_in_window = [in_y[dy] & in_x[dx] for dy in (0, 1) for dx in (0, 1)]
            corners = bilinear_corners(u, v, hl, wl, clamp_pixels=False)
            for corner, (pixel, inside, bilinear, _, _) in enumerate(corners):
                # A window corner is inside the map: only the others take per-sample atomics.
                add_samples(bv * length + start + pixel, a * bilinear, gs, inside & ~corner_in_window[corner])
            return weights

        weights = tc.point_loop(p, point_step, jnp.zeros((wy * wx, block_q), jnp.float32))
        pixel_rows = bv * length + start + (oy + local[:, 0] // wx) * wl + ox + local[:, 0] % wx
        touched = None if interpret else jnp.max(jnp.where(weights != 0.0, 1, 0), axis=1) > 0
        for (first, width, _), (_, lane), g in zip(chunks, lanes, gs, strict=True):
            d_window = lax.dot_general(weights, g, (((1,), (0,)), ((), ())), precision=precision,
                                       preferred_element_type=jnp.float32)  # (wy*wx, width)
            window_rows = jnp.broadcast_to(pixel_rows[:, None], d_window.shape)
            window_cols = jnp.broadcast_to((h * c + first + jnp.arange(width, dtype=jnp.int32))[None, :],
                                           d_window.shape)
            if interpret:
                atomic_add(d_value_ref, (window_rows, window_cols), d_window)
            else:
                atomic_add(d_value_ref, (window_rows, window_cols), d_window,
                           mask=tc.lane_mask(touched, lane, d_window.shape))


# ----------------------------------------------------------------------------------------------------------
# d_offsets, d_attention_weights, d_reference_points
# ----------------------------------------------------------------------------------------------------------
def _corner_gradient(gs, samples, bilinear, dbdu, dbdv, g_sample, g_du, g_dv, *, interpret=False):
    """Add one bilinear corner to a point's (g·sample, d/du, d/dv) sums, each (block_q,); gs and samples are
    the lane chunks of the cotangent and of the corner's value rows (summed elementwise, then one reduction)."""
    product = gs[0] * samples[0].astype(jnp.float32)
    for g, sample in zip(gs[1:], samples[1:], strict=True):
        product = tc.fused_multiply_add(g, sample.astype(jnp.float32), product, interpret=interpret)
    g_dot = jnp.sum(product, axis=1)
    return tuple(tc.fused_multiply_add(weight, g_dot, total, interpret=interpret)
                 for weight, total in ((bilinear, g_sample), (dbdu, g_du), (dbdv, g_dv)))


def _accumulate_point(accumulators, one_hot, a, g_sample, g_du, g_dv):
    """Fold one point's sums into (d_attn, d_u, d_v) (block_q, NL·P) one-hot columns and d_ref_u/v (block_q,)."""
    d_attn_acc, d_u_acc, d_v_acc, d_ref_u, d_ref_v = accumulators
    d_u = a * g_du
    d_v = a * g_dv
    return (d_attn_acc + jnp.where(one_hot, g_sample[:, None], 0.0),
            d_u_acc + jnp.where(one_hot, d_u[:, None], 0.0),
            d_v_acc + jnp.where(one_hot, d_v[:, None], 0.0),
            d_ref_u + d_u, d_ref_v + d_v)


def _store_reference_gradient(d_ref_ref, d_ref_u, d_ref_v, *, bv, q_count, q, heads, h, q_in, point_col,
                              interpret=False):
    """Store one view's d_reference_points of head h, (B, V, Q, H, 2) flat (padded by NL·P slots at the end).

    On the GPU u and v go out as one (block_q, NL·P) tile, of which columns 0 and 1 are stored: a tile of the
    accumulators' shape, with addresses contiguous along its columns, keeps their register layout, so Triton
    needs no layout conversion through shared memory (a kernel that uses any shared memory is launched
    preferring shared memory over L1, which this kernel's gathers need; see docs/kernels.md).
    The interpreter, which cannot skip masked addresses within one store, takes two stores of (block_q,)."""
    ref_index = ((bv * q_count + q) * heads + h) * 2
    if interpret:
        plgpu.store(d_ref_ref.at[ref_index], d_ref_u, mask=q_in)
        plgpu.store(d_ref_ref.at[ref_index + 1], d_ref_v, mask=q_in)
        return
    index = ref_index[:, None] + point_col
    uv = jnp.where(point_col == 0, d_ref_u[:, None], d_ref_v[:, None])
    plgpu.store(d_ref_ref.at[index], uv, mask=q_in[:, None] & (point_col < 2))


def _planar_offsets(d_off_planar, offsets_shape):
    """(B, Q, H, 2, NL·P) flat -> offsets_shape (B, Q, H, NL, P, 2)."""
    b, q, heads, nl, p, _ = offsets_shape
    return jnp.moveaxis(d_off_planar.reshape(b, q, heads, 2, nl, p), 3, -1)


def _point_grads_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, g_ref, d_ref_ref, d_off_ref,
                        d_attn_ref, *, dims, shapes, block_q, chunks, interpret):
    """One program: block_q queries (consecutive in the query order) of one (b, h), all views in a loop."""
    v_count, q_count, length, heads, c, nl, p = dims
    h, b = pl.program_id(0), pl.program_id(2)
    q, q_in, qc = tc.program_queries(order_ref, b, q_count, block_q)  # q: store index, qc: clipped
    point_base = ((b * q_count + qc) * heads + h) * (nl * p)
    lanes = tc.chunk_lanes(h, c, chunks, block_q)
    point_col = jnp.arange(nl * p, dtype=jnp.int32)[None, :]  # (1, NL*P): one-hot columns of the accumulators

    def view_step(bv, accs):
        valid, ref_u, ref_v, gs = _view_cotangent(mask_ref, ref_ref, g_ref, bv=bv, q_count=q_count, q_in=q_in,
                                                  qc=qc, lanes=lanes)
        d_ref_uv = (jnp.zeros((block_q,), jnp.float32),) * 2
        for level, ((hl, wl), start) in enumerate(zip(shapes, level_starts(shapes), strict=True)):

            def point_step(point, carry, level=level, hl=hl, wl=wl, start=start):
                accs, d_ref_uv = carry
                a, u, v = tc.point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
                sums = (jnp.zeros((block_q,), jnp.float32),) * 3
                for pixel, inside, bilinear, dbdu, dbdv in bilinear_corners(u, v, hl, wl, clamp_pixels=False):
                    pixel_rows = bv * length + start + pixel
                    samples = tuple(
                        plgpu.load(value_ref.at[jnp.broadcast_to(pixel_rows[:, None], cols.shape), cols],
                                   mask=tc.lane_mask(inside, lane, cols.shape), other=0.0)
                        for cols, lane in lanes)
                    sums = _corner_gradient(gs, samples, bilinear, dbdu, dbdv, *sums, interpret=interpret)
                new = _accumulate_point((*accs, *d_ref_uv), point_col == level * p + point, a, *sums)
                return new[:3], new[3:]

            accs, d_ref_uv = tc.point_loop(p, point_step, (accs, d_ref_uv))
        _store_reference_gradient(d_ref_ref, *d_ref_uv, bv=bv, q_count=q_count, q=q, heads=heads, h=h, q_in=q_in,
                                  point_col=point_col, interpret=interpret)
        return accs

    zeros = jnp.zeros((block_q, nl * p), jnp.float32)
    d_attn_acc, d_u_acc, d_v_acc = lax.fori_loop(0, v_count, lambda view, accs: view_step(b * v_count + view, accs),
                                                 (zeros, zeros, zeros))
    # d_attention_weights (B, Q, H, NL·P) and d_offsets planar (B, Q, H, 2, NL·P) (y plane at + NL·P), so that
    # each tile's addresses are contiguous along its columns (see _store_reference_gradient).
    row = (b * q_count + q) * heads + h
    attn_index = (row * (nl * p))[:, None] + point_col
    off_index = (row * 2 * (nl * p))[:, None] + point_col
    store_mask = jnp.broadcast_to(q_in[:, None], attn_index.shape)
    plgpu.store(d_attn_ref.at[attn_index], d_attn_acc, mask=store_mask)
    plgpu.store(d_off_ref.at[off_index], d_u_acc, mask=store_mask)
    plgpu.store(d_off_ref.at[off_index + nl * p], d_v_acc, mask=store_mask)


def _interpret_block_q(block_q, q):
    """The interpreter cannot mask stores: a block_q (at most 8) that divides Q, so no slot is padding."""
    block_q = min(block_q, 8)
    while q % block_q:
        block_q //= 2
    return block_q


def backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, order, *,
             config: DeformableConfig = DEFAULT_CONFIG, interpret=False, debug=False):
    """Gradients (d_value, d_reference_points, d_offsets, d_attention_weights) in the inputs' dtypes, for the
    output cotangent g (B, V, Q, H, C); mask (B, V, Q) bool; order (B, Q) int32 (as in ``forward_triton``).
    ``debug``: ``pallas_call(debug=True)``, which prints each kernel's jaxpr and Triton IR when it is lowered."""
    b, v, length, heads, c = value.shape
    dims = tc.dims(value, offsets)
    q, nl, p = dims[1], dims[5], dims[6]
    shapes = tuple(spatial_shapes)
    chunks = tc.channel_chunks(c, config.backward_channel_chunk)
    value_q = max(min(config.value_grad_block_q, tc.next_pow2(q)), 16)  # at least 16: the window matmul's K
    point_q = min(config.point_grads_block_q, tc.next_pow2(q))
    if interpret:
        value_q, point_q = _interpret_block_q(value_q, q), _interpret_block_q(point_q, q)
    args = (*tc.flat_inputs(value, reference_points, offsets, attention_weights, mask), order.reshape(-1),
            g.reshape(b * v * q, heads * c))

    def call(kernel, num_warps, **kwargs):
        return pl.pallas_call(kernel, compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
                              interpret=interpret, debug=debug, **kwargs)

    # tf32x3 on tensor cores: ~fp32 accuracy; the CPU interpreter takes an ordinary fp32 precision.
    precision = lax.Precision.HIGHEST if interpret else lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    value_kernel = functools.partial(
        _value_grad_kernel, dims=dims, shapes=shapes, windows=tuple(window_shape(s, config.window) for s in shapes),
        block_q=value_q, chunks=chunks, interpret=interpret, atomic_add=gradient_atomic_add(config.relaxed_atomics),
        precision=precision)
    d_value_shape = jax.ShapeDtypeStruct((b * v * length, heads * c), jnp.float32)
    d_value = call(value_kernel, config.value_grad_num_warps, out_shape=d_value_shape,
                   grid=(heads, pl.cdiv(q, value_q), b * v), input_output_aliases={len(args): 0},
                   name="deformable_sample_bwd_dvalue_tent")(*args, jnp.zeros(d_value_shape.shape, jnp.float32))

    point_kernel = functools.partial(_point_grads_kernel, dims=dims, shapes=shapes, block_q=point_q, chunks=chunks,
                                     interpret=interpret)
    f32 = lambda n: jax.ShapeDtypeStruct((n,), jnp.float32)  # noqa: E731
    # d_reference_points per head with NL*P slots of padding (see _store_reference_gradient); d_offsets planar.
    d_ref_heads, d_off, d_attn = call(
        point_kernel, config.point_grads_num_warps,
        out_shape=(f32(b * v * q * heads * 2 + nl * p), f32(offsets.size), f32(attention_weights.size)),
        grid=(heads, pl.cdiv(q, point_q), b), name="deformable_sample_bwd_point_grads")(*args)

    d_ref = d_ref_heads[:b * v * q * heads * 2].reshape(b, v, q, heads, 2).sum(axis=3)
    return (d_value.reshape(value.shape).astype(value.dtype),
            d_ref.astype(reference_points.dtype),
            _planar_offsets(d_off, offsets.shape).astype(offsets.dtype),
            d_attn.reshape(attention_weights.shape).astype(attention_weights.dtype))
