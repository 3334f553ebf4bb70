"""Pallas (Triton backend) kernels of :mod:`geolrm_kernels.deformable_sample`.

Layout seen by the kernels (free reshapes of the contract's arrays, no copies of the value map):

- value as (B*V*L, H*C): row = (b*V + v)*L + level start + y*w_l + x, columns h*C .. h*C + C;
- out / its cotangent as (B*V*Q, H*C);
- reference points, offsets, attention weights and the (B, V, Q) mask flattened to 1-D fp32 / int32.

Forward: grid (H, cdiv(Q, block_q), B*V), heads fastest, so programs resident together read the same
pixels' rows of every head. One program owns block_q queries of one (b, v, h): for each of the NL*P points it
computes the four bilinear corners and gathers (block_q, C) rows with masked indexed loads. It keeps one
(block_q, C) fp32 accumulator and writes the output once: no intermediate is larger than the output.
A head's C channels are handled as lane chunks (``channel_chunks``: one power-of-two block, or tiles of 16
lanes, each with its own loads, accumulator, atomics and matmuls; ``FORWARD_CHANNEL_CHUNK``,
``BACKWARD_CHANNEL_CHUNK``), and the corners' pixel indices are left unclipped where every access is masked
(``CLAMP_PIXELS``).

Programs take their queries in ``spatial_query_order`` (a 2-view Morton key of the reference points, passed to
the kernels as a (B*Q,) int32 permutation), so that a program's queries read and atomically add to nearby
pixels; only the speed depends on it (``SORT_QUERIES``).

Two further forward variants are kept selectable for comparison (``forward(..., variant=...)``, both measured
slower on an H100): the same kernel with the point loop unrolled, and "all_heads", whose programs own
block_q queries x block_c channels of the flat H*C axis (each lane's head = channel // C).

Backward (``deformable_sample_backward_triton``): grid (H, cdiv(Q, block_q), B). One program owns block_q
queries of one (b, h) and loops over the V views, recomputing the samples. d_attention_weights and d_offsets
(shared by the views) accumulate in (block_q, NL*P) registers and are stored once; d_reference_points is
stored per head and summed over heads outside the kernel. Only d_value, which queries share through
overlapping pixels, needs atomic adds; they are fp32 adds with *relaxed* memory ordering (see
:func:`relaxed_atomics_status`), where ``plgpu.atomic_add`` would order each one with acquire-release
semantics. Variants (``BACKWARD_VARIANTS``): per-sample atomics ("atomic"), window accumulation by a matmul
("window"), and both split into a d_value kernel and a point-gradient kernel ("split", "split_window").
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.deformable_query_order import spatial_query_order
from geolrm_kernels.deformable_sample import _MASKED_LOCATION, _level_starts, bilinear_corners
from geolrm_kernels.relaxed_atomics import relaxed_atomics_status  # noqa: F401  (re-exported: part of this API)
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Block sizes and warps: the fastest of tools/bench_deformable.py --sweep on an H100 (2026-11-25, V=21,
# 140^2+80^2, S=16384, H=16, C=48). Forward block_q 16/32/64/128 -> 11.6/12.9/20.8/23.5 ms. Backward kernel
# alone (views loop, relaxed d_value atomics) block_q 16/32/64 -> 84.0/84.5/155.9 ms (4 warps); with
# acquire-release atomics at block_q 16: 146.9 ms. With the query order (04:26 UTC, model-like SV3D points):
# backward (block_q, warps) (16, 4)/(8, 4)/(8, 2)/(16, 2) -> 30.5/30.9/30.8/32.1 ms, forward (16, 4)/(8, 4)/
# (16, 2)/(8, 2) -> 7.05/7.20/8.27/7.03 ms.
FORWARD_BLOCK_Q = 16
FORWARD_NUM_WARPS = 4
# Forward kernel variants (see forward()): "per_head" (one head per program, a fori_loop over the points),
# "per_head_fma" (the same with its multiply-adds fused by fused_multiply_add), "per_head_unrolled" (points
# unrolled), "all_heads" (lanes over all heads' channels). FORWARD_VARIANT is what the op runs; FORWARD_CONFIGS
# gives each variant's (block_q, block_c, num_warps) defaults (block_c only for "all_heads"). H100, 2026-11-25:
# fp32, 448 px, S=8192, V=6 / V=21: per_head 1.61 / 4.97 ms, per_head_unrolled 1.78 / 5.32, all_heads
# (8, 256, 4) 4.08 / 13.27; 560 px, V=21, S=16384, SV3D / random points: per_head 6.99 / 11.12 ms,
# per_head_fma 6.54 / 11.15 (13:10 UTC). See docs/deformable.md.
FORWARD_VARIANTS = ("per_head", "per_head_unrolled", "all_heads", "per_head_fma")
FORWARD_VARIANT = "per_head_fma"
FORWARD_CONFIGS = {"per_head": (FORWARD_BLOCK_Q, None, FORWARD_NUM_WARPS), "per_head_unrolled": (16, None, 4),
                   "all_heads": (8, 256, 4), "per_head_fma": (FORWARD_BLOCK_Q, None, FORWARD_NUM_WARPS)}
# Programs take their queries in spatial_query_order (forward and backward): a 2-view Morton key, so that a
# block's queries sample nearby pixels (H100: backward 46.0 -> 31.8 ms at V=21, S=16384 on model-like points).
SORT_QUERIES = True
# Backward variants (deformable_sample_backward_triton): how d_value is accumulated ("atomic": per-sample relaxed
# atomics; "window": a pixel window per program and (view, level) built from one-hot compares, added by a
# matmul; "tent": the same window built from tent products) and whether the point gradients share the kernel
# (fused), follow in a second kernel ("split", "split_window", "split_tent") or run as the odd programs of
# the same launch ("interleaved", "tent_interleaved"). BACKWARD_CONFIGS: (block_q, window side, num_warps) of
# the d_value (or fused) kernel. BACKWARD_VARIANT is what the op runs: "split_tent", the fastest measured on
# model-like (SV3D) and on random points. H100, 2026-11-25, V=21, S=16384, SV3D / random points, backward alone:
# split_tent 27.1 / 57.5 ms, interleaved 29.4 / 52.7, atomic 30.5 / 82.4, tent_interleaved 37.7 / 60.7,
# tent (fused) 36.2 / 81.2, split 42.7 / 67.2, window 112 / 139 (12:20-13:10 UTC). See docs/deformable.md.
# "split_tent" runs with BACKWARD_CHANNEL_CHUNK lanes (fp32), its config measured for that layout (H200,
# 2026-12-04: d_value kernel (16, 8, 2) 11.58 ms, (16, 8, 4) 12.53, (32, 8, 4) 13.35).
BACKWARD_VARIANTS = ("atomic", "window", "split", "split_window", "tent", "split_tent", "interleaved",
                     "tent_interleaved")
BACKWARD_CONFIGS = {"atomic": (16, None, 4), "window": (16, 8, 4), "split": (16, None, 4),
                    "split_window": (16, 8, 4), "tent": (16, 8, 4), "split_tent": (16, 8, 2),
                    "interleaved": (16, None, 8), "tent_interleaved": (16, 8, 4)}
BACKWARD_VARIANT = "split_tent"
# 16-bit values (the model's bf16): split_tent in 16-lane chunks too since 2026-12-04 (H200, V=21, S=16384, SV3D
# points, whole backward alone: 19.18 ms against 26.38 for "interleaved" with one block per head and 31.45 for
# "split" chunked; through the op fwd+bwd 23.57 vs 30.86 ms; 04:34 UTC). It gained once its point-gradient
# kernel used no shared memory (REFERENCE_GRADIENT_TILE_STORE); before that "interleaved" was fastest.
BACKWARD_VARIANT_16BIT = "split_tent"
# The per-head forward and the backward kernels (other than "window") take bilinear corners with unclipped pixel
# indices (bilinear_corners(..., clamp_pixels=False)): every access is masked by the corner's in-image test, so
# the clip was dead work on each corner (fewer instructions per point; see docs/deformable.md).
CLAMP_PIXELS = False
# Lanes per channel chunk of a head (channel_chunks): 16 tiles the model's C = 48 exactly (three chunks, no
# padded lanes, 4 threads per query); 0 is one block of the next power of two (64 lanes, 16 of them padding,
# 16 threads per query). H200, V=21, S=16384, SV3D points, kernels alone (2026-12-04 03:21 UTC,
# tools/bench_deformable_layouts.py): fp32 tent d_value 16.22 ms (0) -> 11.58 (16, at (16, 8, 2)), point
# gradients 11.80 (0, 8 warps) -> 10.47 (16, 4 warps), and 7.20 once free of shared memory (04:34 UTC); the
# forward gains nothing (6.12 ms (0) vs 6.15 (16, block_q 32)).
FORWARD_CHANNEL_CHUNK = 0
# Points per iteration of the kernels' point loops (lax.fori_loop unroll; 1: a plain loop). Measured on the
# H200 (2026-12-04, kernels alone): 2 slows the forward (6.27 -> 6.50 ms) and the shared-memory-free point
# gradients (7.20 -> 8.86), and speeds the tent d_value kernel by 4% (11.48 -> 11.04), so 1 everywhere.
# num_stages > 1 leaves these loops as they are (Triton's pipeliner does not take them, same SASS).
FORWARD_POINT_UNROLL = 1
BACKWARD_POINT_UNROLL = 1
# The point-gradient kernels store each view's d_reference_points as one tile in the accumulators' layout, which
# keeps the (16, 4)-warp chunked kernel free of shared memory. XLA launches any kernel that uses shared memory
# with cuFuncSetCacheConfig(PREFER_SHARED), which leaves the gathers about 25 KB of L1 (Nsight Compute on the
# H200: L1 hit rate 11% -> 54%, 10.29 -> 7.20 ms; see docs/deformable.md). False: two (block_q,) stores, whose
# layout conversion goes through shared memory (kept for the benchmark's comparison).
REFERENCE_GRADIENT_TILE_STORE = True
BACKWARD_CHANNEL_CHUNK = 16  # fp32 values
BACKWARD_CHANNEL_CHUNK_16BIT = 16  # bf16 / fp16 values


def query_order(reference_points, mask, sort_queries):
    """spatial_query_order, or the identity (B, Q) when sort_queries is False."""
    if sort_queries:
        return spatial_query_order(reference_points, mask)
    b, q = mask.shape[0], mask.shape[2]
    return jnp.broadcast_to(jnp.arange(q, dtype=jnp.int32), (b, q))


def resolve_query_order(order, reference_points, mask, sort_queries):
    """The precomputed order when given, else query_order with sort_queries (default SORT_QUERIES)."""
    if order is not None:
        return order.astype(jnp.int32)
    return query_order(reference_points, mask, SORT_QUERIES if sort_queries is None else sort_queries)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _program_queries(order_ref, b, q_count, block_q, block=None):
    """(store index, in range, clipped query index) of this program's block_q slots of the query order
    (block: the query block, default pl.program_id(1)).

    Slots past Q keep their unclipped index for (masked) stores, as without an order."""
    block = pl.program_id(1) if block is None else block
    slot = block * block_q + jnp.arange(block_q, dtype=jnp.int32)
    q_in = slot < q_count
    qc = order_ref[b * q_count + jnp.minimum(slot, q_count - 1)]
    return jnp.where(q_in, qc, slot), q_in, qc


def _program_setup(ref_ref, mask_ref, order_ref, *, dims, block_q):
    """Query indices of this program and its per-query reference point / validity."""
    v_count, q_count, _, heads, c, nl, p = dims
    h = pl.program_id(0)
    bv = pl.program_id(2)
    b = bv // v_count
    q, q_in, qc = _program_queries(order_ref, b, q_count, block_q)
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


def fused_multiply_add(a, b, c, *, interpret=False):
    """a * b + c (fp32, same shapes) with one rounding: PTX ``fma.rn.f32`` by inline assembly, since the Triton
    compile of JAX's Pallas calls does not contract a multiply and an add (Nsight Compute on an H100 counted
    0 fused FP32 instructions in these kernels). The interpreter computes a * b + c."""
    if interpret:
        return a * b + c
    [out] = plgpu.elementwise_inline_asm("fma.rn.f32 $0, $1, $2, $3;", args=[a, b, c], constraints="=f,f,f,f",
                                         pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct(c.shape, jnp.float32)])
    return out


def point_loop(points: int, unroll: int, step, carry):
    """carry = step(point, carry) for point in range(points), ``unroll`` points per iteration of a
    ``fori_loop`` (the Pallas Triton lowering takes no ``unroll`` of its own), the remainder unrolled after
    it; ``unroll >= points`` unrolls them all (every gather visible to the scheduler at once), 1 is a plain
    loop (small code, short compiles)."""

    def body(i, carry):
        for k in range(unroll):
            carry = step(i * unroll + k, carry)
        return carry

    iterations = points // unroll
    if iterations > 1:
        carry = lax.fori_loop(0, iterations, body, carry)
    elif iterations == 1:
        carry = body(0, carry)
    for point in range(iterations * unroll, points):
        carry = step(point, carry)
    return carry


def channel_chunks(c: int, chunk: int):
    """Static lane chunks covering C channels: tuple of (first channel, width, masked).

    ``chunk``: lanes per chunk, a power of two; 0 gives one block of the next power of two at least 16 (C = 48
    pads to 64 lanes). Chunks of 16 tile C = 48 exactly, so no lane is padding, and with 16 queries and 2 warps
    (or 32 and 4) Triton gives each thread 4 channels of one query per chunk: a query's corners, weights and
    addresses are computed by 4 threads instead of 16."""
    if not chunk:
        width = max(16, _next_pow2(c))
        return ((0, width, width > c),)
    return tuple((start, chunk, start + chunk > c) for start in range(0, c, chunk))


def _chunk_lanes(h, c, chunks, block_q):
    """Per chunk: (cols (block_q, width) int32 of head h, lane mask (width,) bool or None when all lanes are
    channels). Unclipped columns keep the loads contiguous and vectorizable; masked lanes are never read."""
    lanes = []
    for start, width, masked in chunks:
        ch = start + jnp.arange(width, dtype=jnp.int32)
        lanes.append((jnp.broadcast_to((h * c + ch)[None, :], (block_q, width)), ch < c if masked else None))
    return lanes


def _lane_mask(row_mask, lane, shape):
    """(block_q, width) mask: row_mask (block_q,) and the chunk's lane mask (width,) or None."""
    if lane is None:
        return jnp.broadcast_to(row_mask[:, None], shape)
    return row_mask[:, None] & lane[None, :]


def _forward_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, out_ref, *, dims, shapes, block_q,
                    unroll, chunks, fma=False):
    v_count, q_count, length, heads, c, nl, p = dims
    h, bv, q, q_in, valid, ref_u, ref_v, point_base, _, _ = _program_setup(
        ref_ref, mask_ref, order_ref, dims=dims, block_q=block_q)
    lanes = _chunk_lanes(h, c, chunks, block_q)
    accs = tuple(jnp.zeros(cols.shape, jnp.float32) for cols, _ in lanes)
    for level, ((hl, wl), start) in enumerate(zip(shapes, _level_starts(shapes), strict=True)):

        def point_step(point, accs, level=level, hl=hl, wl=wl, start=start):
            a, u, v = _point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
            accs = list(accs)
            for pixel, inside, bilinear, _, _ in bilinear_corners(u, v, hl, wl, clamp_pixels=CLAMP_PIXELS):
                coef = (a * bilinear)[:, None]
                for k, (cols, lane) in enumerate(lanes):
                    rows = jnp.broadcast_to((bv * length + start + pixel)[:, None], cols.shape)
                    sample = plgpu.load(value_ref.at[rows, cols], mask=_lane_mask(inside, lane, cols.shape),
                                        other=0.0).astype(jnp.float32)
                    if fma:
                        accs[k] = fused_multiply_add(jnp.broadcast_to(coef, cols.shape), sample, accs[k])
                    else:
                        accs[k] = accs[k] + coef * sample
            return tuple(accs)

        accs = point_loop(p, unroll, point_step, accs)
    for (cols, lane), acc in zip(lanes, accs, strict=True):
        out_rows = jnp.broadcast_to((bv * q_count + q)[:, None], cols.shape)
        plgpu.store(out_ref.at[out_rows, cols], acc.astype(out_ref.dtype), mask=_lane_mask(q_in, lane, cols.shape))


def _forward_all_heads_kernel(value_ref, ref_ref, off_ref, attn_ref, mask_ref, _order_ref, out_ref, *, dims,
                              shapes, block_q, block_c):
    """One program: block_q queries of one (b, v) x block_c consecutive channels of the flat H*C axis.

    Each lane's head is channel // C, so every lane gathers its own (query, head)'s offsets and weight (lanes of
    one head read the same addresses, served by the cache) and computes its own corners: no lanes are wasted
    on padding C to a power of two, the value rows are read in long contiguous segments, and the points are
    unrolled so that all NL*P*4 gathers of a program are independent.
    """
    v_count, q_count, length, heads, c, nl, p = dims
    bv = pl.program_id(2)
    b = bv // v_count
    q = pl.program_id(1) * block_q + jnp.arange(block_q, dtype=jnp.int32)
    q_in = q < q_count
    qc = jnp.minimum(q, q_count - 1)
    valid = (q_in & (mask_ref[bv * q_count + qc] != 0))[:, None]  # (block_q, 1)
    ref_u = ref_ref[(bv * q_count + qc) * 2][:, None]
    ref_v = ref_ref[(bv * q_count + qc) * 2 + 1][:, None]
    col = pl.program_id(0) * block_c + jnp.arange(block_c, dtype=jnp.int32)
    col_in = (col < heads * c)[None, :]  # (1, block_c)
    head = jnp.minimum(col // c, heads - 1)
    point_base = ((b * q_count + qc)[:, None] * heads + head[None, :]) * (nl * p)  # (block_q, block_c)
    cols = jnp.broadcast_to(col[None, :], point_base.shape)
    acc = jnp.zeros(point_base.shape, jnp.float32)
    for level, ((hl, wl), start) in enumerate(zip(shapes, _level_starts(shapes), strict=True)):
        for point in range(p):
            index = point_base + (level * p + point)
            a = jnp.where(valid, attn_ref[index], 0.0)
            u = jnp.where(valid, ref_u + off_ref[index * 2], _MASKED_LOCATION)
            v = jnp.where(valid, ref_v + off_ref[index * 2 + 1], _MASKED_LOCATION)
            for pixel, inside, bilinear, _, _ in bilinear_corners(u, v, hl, wl):
                rows = bv * length + start + pixel
                sample = plgpu.load(value_ref.at[rows, cols], mask=inside & col_in, other=0.0)
                acc += (a * bilinear) * sample.astype(jnp.float32)
    out_rows = jnp.broadcast_to((bv * q_count + q)[:, None], cols.shape)
    plgpu.store(out_ref.at[out_rows, cols], acc.astype(out_ref.dtype), mask=q_in[:, None] & col_in)


def _view_cotangent(mask_ref, ref_ref, g_ref, *, bv, q_count, q_in, qc, lanes):
    """Per query of view bv: validity, reference (u, v), and the cotangent rows of each lane chunk
    ((block_q, width) fp32, zero for invalid queries and padded lanes)."""
    valid = q_in & (mask_ref[bv * q_count + qc] != 0)
    ref_u = ref_ref[(bv * q_count + qc) * 2]
    ref_v = ref_ref[(bv * q_count + qc) * 2 + 1]
    gs = []
    for cols, lane in lanes:
        g_rows = jnp.broadcast_to((bv * q_count + qc)[:, None], cols.shape)
        g = plgpu.load(g_ref.at[g_rows, cols], mask=_lane_mask(q_in, lane, cols.shape), other=0.0)
        gs.append(jnp.where(_lane_mask(valid, lane, cols.shape), g.astype(jnp.float32), 0.0))
    return valid, ref_u, ref_v, tuple(gs)


def _corner_gradient(gs, samples, bilinear, dbdu, dbdv, g_sample, g_du, g_dv, *, interpret=False):
    """Add one bilinear corner to a point's (g·sample, d/du, d/dv) sums, each (block_q,); gs and samples are
    the lane chunks of the cotangent and of the corner's value rows (summed elementwise, then one reduction)."""
    product = gs[0] * samples[0].astype(jnp.float32)
    for g, sample in zip(gs[1:], samples[1:], strict=True):
        product = fused_multiply_add(g, sample.astype(jnp.float32), product, interpret=interpret)
    g_dot = jnp.sum(product, axis=1)
    return tuple(fused_multiply_add(weight, g_dot, total, interpret=interpret)
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
    preferring shared memory over L1, which the point-gradient kernel's gathers need; see docs/deformable.md).
    The interpreter, which cannot skip masked addresses within one store, takes two stores of (block_q,)."""
    ref_index = ((bv * q_count + q) * heads + h) * 2
    if interpret or not REFERENCE_GRADIENT_TILE_STORE:
        plgpu.store(d_ref_ref.at[ref_index], d_ref_u, mask=q_in)
        plgpu.store(d_ref_ref.at[ref_index + 1], d_ref_v, mask=q_in)
        return
    index = ref_index[:, None] + point_col
    uv = jnp.where(point_col == 0, d_ref_u[:, None], d_ref_v[:, None])
    plgpu.store(d_ref_ref.at[index], uv, mask=q_in[:, None] & (point_col < 2))


def point_gradient_index(b, q_count, q, heads, h, points, point_col):
    """(block_q, NL·P) indices of d_attention_weights (B, Q, H, NL·P) and of the x plane of d_offsets, which
    the kernels write planar, (B, Q, H, 2, NL·P) (y plane at + NL·P), so that each tile's addresses are
    contiguous along its columns (see _store_reference_gradient); ``planar_offsets`` restores the layout."""
    row = (b * q_count + q) * heads + h
    return (row * points)[:, None] + point_col, (row * 2 * points)[:, None] + point_col


def planar_offsets(d_off_planar, offsets_shape):
    """(B, Q, H, 2, NL·P) flat -> offsets_shape (B, Q, H, NL, P, 2)."""
    b, q, heads, nl, p, _ = offsets_shape
    return jnp.moveaxis(d_off_planar.reshape(b, q, heads, 2, nl, p), 3, -1)


def _store_point_gradients(d_attn_ref, d_off_ref, d_attn_acc, d_u_acc, d_v_acc, *, b, q_count, q, heads, h,
                           points, point_col, q_in):
    attn_index, off_index = point_gradient_index(b, q_count, q, heads, h, points, point_col)
    store_mask = jnp.broadcast_to(q_in[:, None], attn_index.shape)
    plgpu.store(d_attn_ref.at[attn_index], d_attn_acc, mask=store_mask)
    plgpu.store(d_off_ref.at[off_index], d_u_acc, mask=store_mask)
    plgpu.store(d_off_ref.at[off_index + points], d_v_acc, mask=store_mask)


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
            variant=None, block_q=None, block_c=None, num_warps=None, sort_queries=None, order=None, debug=False,
            chunk=None, point_unroll=None):
    """(B, V, Q, H, C) output in value.dtype; mask is (B, V, Q) bool.

    ``sort_queries`` (default SORT_QUERIES): programs take their queries in :func:`spatial_query_order`
    (per_head variants; "all_heads" ignores the order). ``order`` (B, Q) int32: that order precomputed
    (:func:`query_order`), for calls that share reference points and mask (the layers of a transformer).

    ``variant``: one of FORWARD_VARIANTS (default FORWARD_VARIANT); ``block_q`` / ``block_c`` / ``num_warps``
    default to FORWARD_CONFIGS[variant]. ``debug``: ``pallas_call(debug=True)`` (prints the Triton IR).
    ``chunk``: lanes per channel chunk of the per_head variants (default FORWARD_CHANNEL_CHUNK; 0: one
    power-of-two block per head), see :func:`channel_chunks`. ``point_unroll``: points per iteration of the
    point loop (default FORWARD_POINT_UNROLL; "per_head_unrolled" unrolls them all).
    """
    b, v, length, heads, c = value.shape
    dims = _dims(value, offsets)
    q = dims[1]
    variant = variant or FORWARD_VARIANT
    if variant not in FORWARD_VARIANTS:
        raise ValueError(f"forward variant must be one of {FORWARD_VARIANTS}, got {variant!r}")
    default_q, default_c, default_warps = FORWARD_CONFIGS[variant]
    block_q = block_q or min(default_q, _next_pow2(q))
    num_warps = num_warps or default_warps
    shapes = tuple(spatial_shapes)
    if variant == "all_heads":
        block_c = block_c or min(default_c, _next_pow2(heads * c))
        kernel = functools.partial(_forward_all_heads_kernel, dims=dims, shapes=shapes, block_q=block_q,
                                   block_c=block_c)
        grid = (pl.cdiv(heads * c, block_c), pl.cdiv(q, block_q), b * v)
    else:
        kernel = functools.partial(_forward_kernel, dims=dims, shapes=shapes, block_q=block_q,
                                   unroll=dims[-1] if variant == "per_head_unrolled"
                                   else point_unroll or FORWARD_POINT_UNROLL,
                                   chunks=channel_chunks(c, FORWARD_CHANNEL_CHUNK if chunk is None else chunk),
                                   fma=variant == "per_head_fma" and not interpret)
        grid = (heads, pl.cdiv(q, block_q), b * v)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b * v * q, heads * c), value.dtype),
        grid=grid,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        debug=debug,
        name="deformable_sample_fwd" if variant == "per_head" else f"deformable_sample_fwd_{variant}",
    )(*_flat_inputs(value, reference_points, offsets, attention_weights, mask),
      resolve_query_order(order, reference_points, mask, sort_queries).reshape(-1))
    return out.reshape(b, v, q, heads, c)


def backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, *, interpret=False,
             block_q=None, num_warps=None, relaxed=None, debug=False, variant=None, sort_queries=None,
             order=None, window=None, chunk=None, point_grads_config=None, point_unroll=None):
    """Gradients (d_value, d_reference_points, d_offsets, d_attention_weights) in the inputs' dtypes.

    ``variant``: one of BACKWARD_VARIANTS (default BACKWARD_VARIANT, BACKWARD_VARIANT_16BIT for 16-bit values), run by
    ``deformable_sample_backward_triton``; ``block_q`` / ``window`` / ``num_warps`` default to
    BACKWARD_CONFIGS[variant].
    ``relaxed``: d_value atomics with relaxed memory ordering (default: whenever available, see
    :func:`relaxed_atomics_status`); False uses ``plgpu.atomic_add`` (acquire-release), for comparison.
    ``debug``: ``pallas_call(debug=True)``, which prints the kernel's jaxpr and Triton IR when it is lowered.
    ``sort_queries`` (default SORT_QUERIES): programs take their queries in :func:`spatial_query_order`;
    ``order``: that order precomputed (as in :func:`forward`). ``chunk``: lanes per channel chunk (default
    BACKWARD_CHANNEL_CHUNK, BACKWARD_CHANNEL_CHUNK_16BIT for 16-bit values; see :func:`channel_chunks`);
    ``point_grads_config``: (block_q, num_warps) of the split variants' point-gradient kernel (default
    ``SPLIT_POINT_GRADS_CONFIG``, ``SPLIT_POINT_GRADS_CONFIG_UNCHUNKED`` with chunk 0); ``point_unroll``: points
    per iteration of the kernels' point loops (default BACKWARD_POINT_UNROLL).
    """
    from geolrm_kernels import deformable_sample_backward_triton as bwd

    variant = variant or (BACKWARD_VARIANT_16BIT if jnp.dtype(value.dtype).itemsize == 2 else BACKWARD_VARIANT)
    if variant not in BACKWARD_VARIANTS:
        raise ValueError(f"backward variant must be one of {BACKWARD_VARIANTS}, got {variant!r}")
    default_q, default_window, default_warps = BACKWARD_CONFIGS[variant]
    q = offsets.shape[1]
    block_q = block_q or min(default_q, _next_pow2(q))
    if variant in ("window", "split_window", "tent", "split_tent", "tent_interleaved"):
        block_q = max(block_q, 16)  # the window matmul's K
    order = resolve_query_order(order, reference_points, mask, sort_queries)
    if chunk is None:
        chunk = BACKWARD_CHANNEL_CHUNK_16BIT if jnp.dtype(value.dtype).itemsize == 2 else BACKWARD_CHANNEL_CHUNK
    return bwd.backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, order,
                        variant=variant, block_q=block_q, num_warps=num_warps or default_warps,
                        window=window or default_window, relaxed=relaxed, interpret=interpret, debug=debug,
                        chunk=chunk, point_grads_config=point_grads_config, point_unroll=point_unroll)
