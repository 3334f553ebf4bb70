"""Window-accumulating Pallas (Triton) backward of :mod:`geolrm_kernels.deformable_sample` (issue #4).

The atomic backward of ``deformable_sample_triton`` adds every sample's (C,) contribution to d_value with its
own fp32 atomics: V*Q*H*NL*P*4 corners*C adds (16.9 G at V=21, S=16384), the cost that bounds it. This
kernel instead accumulates, per program and per (view, level), the contributions that land in a small
window of the value map in registers and adds the window with one atomic add per touched pixel:

- queries are visited in a spatially coherent order (``deformable_sample_triton.spatial_query_order``: a
  Morton key of the query's reference points in two views), so that a program's queries sample nearby pixels;
- for each (view, level) the window is the (wy, wx) pixels around the block's mean reference point,
  clamped into the map (wy, wx powers of two, at most the map's size);
- for each point and bilinear corner in the window, ``M[pixel, query] += a * bilinear`` on an fp32
  (wy*wx, block_q) matrix, with iota comparisons (a one-hot scatter in registers);
- after the level's points, ``d_window = M @ g`` (wy*wx, C) with ``jnp.dot`` (tensor cores, tf32x3: fp32
  accuracy) and one masked atomic add of the touched window rows;
- corners outside the window fall back to the per-sample atomics, so the result is exact for any input;
  only the speed depends on locality.

d_offsets, d_attention_weights and d_reference_points are computed as in the atomic backward (registers,
plain stores; the value rows for them are gathered per corner). Layouts as in ``deformable_sample_triton``.

Interpret mode: the Pallas interpreter discharges an atomic add as gather + scatter-*set* and takes no mask,
so the per-sample fallback adds one query at a time (distinct addresses per call) and adds exact zeros
where the GPU masks; window rows are distinct pixels, so the window add needs nothing special.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels import deformable_sample_triton as tri
from geolrm_kernels.deformable_sample import _level_starts, bilinear_corners
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

WINDOW_BLOCK_Q = 32
WINDOW_SIZE = 16  # window of at most WINDOW_SIZE x WINDOW_SIZE pixels per (program, view, level)
WINDOW_NUM_WARPS = 4


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def window_shape(level_shape, size=WINDOW_SIZE):
    """(wy, wx) of a level's window: powers of two, at most ``size`` and at most the map."""
    return min(size, _floor_pow2(level_shape[0])), min(size, _floor_pow2(level_shape[1]))


def _window_backward_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, g_ref, _dv_in,
                            d_value_ref, d_ref_ref, d_off_ref, d_attn_ref, *, dims, shapes, windows, block_q,
                            c_pad, interpret, value_atomic_add, precision):
    """One program: block_q queries (consecutive in the spatial order) of one (b, h), looping over the views."""
    v_count, q_count, length, heads, c, nl, p = dims
    h = pl.program_id(0)
    b = pl.program_id(2)
    q, q_in, qc = tri._program_queries(order_ref, b, q_count, block_q)  # q: store index, qc: clipped
    point_base = ((b * q_count + qc) * heads + h) * (nl * p)
    ch = jnp.arange(c_pad, dtype=jnp.int32)
    ch_in = ch < c
    cols = jnp.broadcast_to((h * c + ch)[None, :], (block_q, c_pad))
    point_col = jnp.arange(nl * p, dtype=jnp.int32)[None, :]

    def view_step(view, acc):
        d_attn_acc, d_u_acc, d_v_acc = acc
        bv = b * v_count + view
        valid, ref_u, ref_v, g = tri._view_cotangent(mask_ref, ref_ref, g_ref, bv=bv, q_count=q_count, q_in=q_in,
                                                     qc=qc, cols=cols, ch_in=ch_in)
        count = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
        mean_u = jnp.sum(jnp.where(valid, ref_u, 0.0)) / count
        mean_v = jnp.sum(jnp.where(valid, ref_v, 0.0)) / count
        d_ref_u = jnp.zeros((block_q,), jnp.float32)
        d_ref_v = jnp.zeros((block_q,), jnp.float32)
        for level, ((hl, wl), start, (wy, wx)) in enumerate(zip(shapes, _level_starts(shapes), windows,
                                                                strict=True)):
            # Window origin: the block's mean reference pixel at the window's centre, clamped into the map.
            ox = jnp.clip(jnp.floor(jnp.clip(mean_u, -1.0, 2.0) * wl - 0.5).astype(jnp.int32) - wx // 2 + 1,
                          0, wl - wx)
            oy = jnp.clip(jnp.floor(jnp.clip(mean_v, -1.0, 2.0) * hl - 0.5).astype(jnp.int32) - wy // 2 + 1,
                          0, hl - wy)
            window_pixel = jnp.arange(wy * wx, dtype=jnp.int32)[:, None]  # (wy*wx, 1)

            def point_step(point, carry, level=level, hl=hl, wl=wl, start=start, wy=wy, wx=wx, ox=ox, oy=oy,
                           window_pixel=window_pixel):
                weights = carry[5]
                a, u, v = tri._point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
                g_sample = jnp.zeros((block_q,), jnp.float32)
                g_du = jnp.zeros((block_q,), jnp.float32)
                g_dv = jnp.zeros((block_q,), jnp.float32)
                for pixel, inside, bilinear, dbdu, dbdv in bilinear_corners(u, v, hl, wl):
                    rows = jnp.broadcast_to((bv * length + start + pixel)[:, None], cols.shape)
                    load_mask = inside[:, None] & ch_in[None, :]
                    sample = plgpu.load(value_ref.at[rows, cols], mask=load_mask, other=0.0)
                    g_sample, g_du, g_dv = tri._corner_gradient(g, sample, bilinear, dbdu, dbdv, g_sample, g_du,
                                                                g_dv)
                    lx = pixel % wl - ox
                    ly = pixel // wl - oy
                    in_window = inside & (lx >= 0) & (lx < wx) & (ly >= 0) & (ly < wy)
                    local = jnp.where(in_window, ly * wx + lx, -1)
                    coef = a * bilinear
                    weights += jnp.where(window_pixel == local[None, :], coef[None, :], 0.0)
                    outside = jnp.where(inside & ~in_window, coef, 0.0)
                    contribution = outside[:, None] * g
                    if interpret:  # one query per call: distinct addresses; zeros instead of masks
                        for i in range(block_q):
                            value_atomic_add(d_value_ref, (rows[i:i + 1], cols[i:i + 1]), contribution[i:i + 1])
                    else:
                        fallback = (inside & ~in_window & q_in)[:, None] & ch_in[None, :]
                        value_atomic_add(d_value_ref, (rows, cols), contribution, mask=fallback)
                accumulators = tri._accumulate_point(carry[:5], point_col == level * p + point, a, g_sample, g_du,
                                                     g_dv)
                return (*accumulators, weights)

            weights = jnp.zeros((wy * wx, block_q), jnp.float32)
            d_attn_acc, d_u_acc, d_v_acc, d_ref_u, d_ref_v, weights = lax.fori_loop(
                0, p, point_step, (d_attn_acc, d_u_acc, d_v_acc, d_ref_u, d_ref_v, weights))
            d_window = jnp.dot(weights, g, precision=precision, preferred_element_type=jnp.float32)
            pixel_rows = bv * length + start + (oy + window_pixel // wx) * wl + ox + window_pixel % wx
            window_rows = jnp.broadcast_to(pixel_rows, d_window.shape)
            window_cols = jnp.broadcast_to((h * c + ch)[None, :], d_window.shape)
            if interpret:
                value_atomic_add(d_value_ref, (window_rows, window_cols), d_window)
            else:
                touched = jnp.max(jnp.where(weights != 0.0, 1, 0), axis=1) > 0
                value_atomic_add(d_value_ref, (window_rows, window_cols), d_window,
                                 mask=touched[:, None] & ch_in[None, :])
        tri._store_reference_gradient(d_ref_ref, d_ref_u, d_ref_v, bv=bv, q_count=q_count, q=q, heads=heads,
                                      h=h, q_in=q_in)
        return d_attn_acc, d_u_acc, d_v_acc

    zeros = jnp.zeros((block_q, nl * p), jnp.float32)
    d_attn_acc, d_u_acc, d_v_acc = lax.fori_loop(0, v_count, view_step, (zeros, zeros, zeros))
    tri._store_point_gradients(d_attn_ref, d_off_ref, d_attn_acc, d_u_acc, d_v_acc, b=b, q_count=q_count, q=q,
                               heads=heads, h=h, points=nl * p, point_col=point_col, q_in=q_in)


def backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, *, interpret=False,
             block_q=None, window=None, num_warps=None, sort_queries=None, relaxed=None, debug=False,
             order=None):
    """Gradients (d_value, d_reference_points, d_offsets, d_attention_weights), as
    ``deformable_sample_triton.backward``, with window-accumulated d_value.

    ``block_q`` (>= 16 on GPU: the matmul's K), ``window`` (max window side) and ``num_warps`` default to
    WINDOW_BLOCK_Q / WINDOW_SIZE / WINDOW_NUM_WARPS; ``sort_queries`` (default
    ``deformable_sample_triton.SORT_QUERIES``): visit the queries in ``spatial_query_order``.
    """
    b, v, length, heads, c = value.shape
    dims = tri._dims(value, offsets)
    q = dims[1]
    if interpret:
        # Small blocks keep the interpreter's per-query fallback short, and dividing Q they leave no padded
        # slots (whose stores would duplicate a real query's addresses: the interpreter has no masked store).
        block_q = block_q or 8
        while q % block_q:
            block_q //= 2
    block_q = block_q or min(WINDOW_BLOCK_Q, max(16, tri._next_pow2(q)))
    shapes = tuple(spatial_shapes)
    windows = tuple(window_shape(s, window or WINDOW_SIZE) for s in shapes)
    available, reason = tri.relaxed_atomics_status()
    if relaxed is None:
        relaxed = available
    if relaxed and not available:
        raise ValueError(f"relaxed atomics are unavailable with this JAX: {reason}")
    # tf32x3 on tensor cores: ~fp32 accuracy; the CPU interpreter takes an ordinary fp32 precision.
    precision = lax.Precision.HIGHEST if interpret else lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    kernel = functools.partial(
        _window_backward_kernel, dims=dims, shapes=shapes, windows=windows, block_q=block_q,
        c_pad=max(16, tri._next_pow2(c)), interpret=interpret, precision=precision,
        value_atomic_add=tri._relaxed_atomic_add if relaxed else plgpu.atomic_add)
    order = tri.resolve_query_order(order, reference_points, mask, sort_queries)
    f32 = lambda n: jax.ShapeDtypeStruct((n,), jnp.float32)
    value_2d, ref_flat, off_flat, attn_flat, mask_flat = tri._flat_inputs(value, reference_points, offsets,
                                                                          attention_weights, mask)
    d_value, d_ref_heads, d_off, d_attn = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((b * v * length, heads * c), jnp.float32),
                   f32(b * v * q * heads * 2), f32(offsets.size), f32(attention_weights.size)),
        grid=(heads, pl.cdiv(q, block_q), b),
        input_output_aliases={7: 0},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps or WINDOW_NUM_WARPS, num_stages=1),
        interpret=interpret,
        debug=debug,
        name="deformable_sample_bwd_window",
    )(value_2d, ref_flat, off_flat, attn_flat, mask_flat, order.reshape(-1), g.reshape(b * v * q, heads * c),
      jnp.zeros((b * v * length, heads * c), jnp.float32))
    d_ref = d_ref_heads.reshape(b, v, q, heads, 2).sum(axis=3)
    return (d_value.reshape(value.shape).astype(value.dtype),
            d_ref.astype(reference_points.dtype),
            d_off.reshape(offsets.shape).astype(offsets.dtype),
            d_attn.reshape(attention_weights.shape).astype(attention_weights.dtype))
