"""Pallas (Triton backend) forward kernel of :mod:`geolrm_kernels.deformable` (layout: ``triton_common``).

Grid (H, cdiv(Q, block_q), B*V), heads fastest, so programs resident together read the same pixels' rows of
every head. One program owns block_q queries of one (b, v, h), taken in the query order (a 2-view Morton key of
the reference points, so that a program's queries read nearby pixels): for each of the NL*P points it computes
the four bilinear corners (pixel indices unclipped: every access is masked by the corner's in-image test) and
gathers (block_q, C) rows with masked indexed loads. It keeps one (block_q, C) fp32 accumulator per lane chunk,
updated by fused multiply-adds, and writes the output once: no intermediate is larger than the output.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.deformable import triton_common as tc
from geolrm_kernels.deformable.config import DEFAULT_CONFIG, DeformableConfig
from geolrm_kernels.deformable.reference import bilinear_corners, level_starts
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _program_setup(ref_ref, mask_ref, order_ref, *, dims, block_q):
    """Query indices of this program and its per-query reference point / validity."""
    v_count, q_count, _, heads, c, nl, p = dims
    h = pl.program_id(0)
    bv = pl.program_id(2)
    b = bv // v_count
    q, q_in, qc = tc.program_queries(order_ref, b, q_count, block_q)
    valid = q_in & (mask_ref[bv * q_count + qc] != 0)
    ref_u = ref_ref[(bv * q_count + qc) * 2]
    ref_v = ref_ref[(bv * q_count + qc) * 2 + 1]
    point_base = ((b * q_count + qc) * heads + h) * (nl * p)
    return h, bv, q, q_in, valid, ref_u, ref_v, point_base


def _forward_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, out_ref, *, dims, shapes, block_q,
                    chunks, fma):
    v_count, q_count, length, heads, c, nl, p = dims
    h, bv, q, q_in, valid, ref_u, ref_v, point_base = _program_setup(
        ref_ref, mask_ref, order_ref, dims=dims, block_q=block_q)
    lanes = tc.chunk_lanes(h, c, chunks, block_q)
    accs = tuple(jnp.zeros(cols.shape, jnp.float32) for cols, _ in lanes)
    for level, ((hl, wl), start) in enumerate(zip(shapes, level_starts(shapes), strict=True)):

        def point_step(point, accs, level=level, hl=hl, wl=wl, start=start):
            a, u, v = tc.point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
            accs = list(accs)
            for pixel, inside, bilinear, _, _ in bilinear_corners(u, v, hl, wl, clamp_pixels=False):
                coef = (a * bilinear)[:, None]
                for k, (cols, lane) in enumerate(lanes):
                    rows = jnp.broadcast_to((bv * length + start + pixel)[:, None], cols.shape)
                    sample = plgpu.load(value_ref.at[rows, cols], mask=tc.lane_mask(inside, lane, cols.shape),
                                        other=0.0).astype(jnp.float32)
                    if fma:
                        accs[k] = tc.fused_multiply_add(jnp.broadcast_to(coef, cols.shape), sample, accs[k])
                    else:
                        accs[k] = accs[k] + coef * sample
            return tuple(accs)

        accs = tc.point_loop(p, point_step, accs)
    for (cols, lane), acc in zip(lanes, accs, strict=True):
        out_rows = jnp.broadcast_to((bv * q_count + q)[:, None], cols.shape)
        plgpu.store(out_ref.at[out_rows, cols], acc.astype(out_ref.dtype), mask=tc.lane_mask(q_in, lane, cols.shape))


def forward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, order, *,
            config: DeformableConfig = DEFAULT_CONFIG, interpret=False, debug=False):
    """(B, V, Q, H, C) output in value.dtype; mask (B, V, Q) bool; order (B, Q) int32, the query order
    (``query_order.resolve_query_order``). ``debug``: ``pallas_call(debug=True)`` (prints the Triton IR)."""
    b, v, length, heads, c = value.shape
    dims = tc.dims(value, offsets)
    q = dims[1]
    block_q = min(config.forward_block_q, tc.next_pow2(q))
    kernel = functools.partial(_forward_kernel, dims=dims, shapes=tuple(spatial_shapes), block_q=block_q,
                               chunks=tc.channel_chunks(c, config.forward_channel_chunk), fma=not interpret)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b * v * q, heads * c), value.dtype),
        grid=(heads, pl.cdiv(q, block_q), b * v),
        compiler_params=plgpu.CompilerParams(num_warps=config.forward_num_warps, num_stages=1),
        interpret=interpret,
        debug=debug,
        name="deformable_sample_fwd",
    )(*tc.flat_inputs(value, reference_points, offsets, attention_weights, mask), order.reshape(-1))
    return out.reshape(b, v, q, heads, c)
