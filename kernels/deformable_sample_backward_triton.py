"""Pallas (Triton) backward kernels of :mod:`geolrm_kernels.deformable_sample` (issue #4).

Layouts as in ``deformable_sample_triton`` (value and d_value as (B*V*L, H*C), cotangent as (B*V*Q, H*C), the
small inputs flattened). One kernel body, specialised by three static choices:

- ``value_grad``: how d_value is accumulated.
  "atomic": every bilinear corner of every sample adds its (block_q, C) rows with relaxed fp32 atomics
  (V*Q*H*NL*P*4*C adds, 16.9 G at V=21, S=16384).
  "window": per (view, level), the corners that fall in a wy x wx pixel window (origin at the block's mean
  reference pixel, clamped into the map) accumulate ``W[query, pixel] += a * bilinear`` in a (block_q, wy*wx)
  fp32 register matrix (iota comparisons; with wy*wx = the padded C it has the shape, and so the layout, of the
  cotangent block), then ``d_window = W^T @ g`` (tf32x3 tensor-core dot: fp32-accurate) is added with one
  atomic per touched pixel row; corners outside the window take the per-sample atomics, so the result is
  exact for any input and only the speed depends on locality.
  "tent": the same window with weights ``W[pixel, query] += a * max(0, 1 - |j - x|) * max(0, 1 - |i - y|)``
  (bilinear weights as products of tent functions: float ops, no corner indices), in (pixel, query)
  orientation so ``d_window = W @ g`` needs no transpose; which corners fall in the window is decided from
  floor(x), floor(y) in the float domain.
  "none": no d_value (the point-gradient half of a split backward).
- ``point_grads``: compute d_offsets / d_attention_weights (summed over views in (block_q, NL*P) registers, one
  plain store) and d_reference_points (per head, summed over heads outside), which needs the value rows
  gathered at every corner. d_value alone needs no value reads.
- ``views_in_grid``: grid (H, Q blocks, B*V), one view per program, or grid (H, Q blocks, B) with a loop over
  the views. Point gradients with views in the grid add d_offsets / d_weights atomically into zeros; with a
  value_grad too the kernel is "interleaved": grid (2H, Q blocks, B*V), even programs along axis 0 do the
  d_value work, odd ones the point gradients.

Variants (``VARIANT_KERNELS``): "atomic", "window" and "tent" are one fused kernel (point gradients + d_value);
"split", "split_window" and "split_tent" are two kernels: d_value (views in the grid, no value gathers) then
the point gradients (no atomics, ``SPLIT_POINT_GRADS_CONFIG``); "interleaved" and "tent_interleaved" are
one interleaved launch.

Interpret mode: the Pallas interpreter discharges an atomic add as gather + scatter-*set* (duplicate addresses
in one call lose updates) and takes no mask, so per-sample atomics add one query's row per call (distinct
addresses) with exact zeros where the GPU masks; window rows are distinct pixels. block_q divides Q there
(no padded slots, whose stores the interpreter cannot mask).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels import deformable_sample_triton as tri
from geolrm_kernels.deformable_sample import _level_starts, bilinear_corners
from geolrm_kernels.relaxed_atomics import relaxed_atomic_add, relaxed_atomics_status
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# (value_grad, point_grads, views_in_grid) of each kernel of a variant.
VARIANT_KERNELS = {
    "atomic": (("atomic", True, False),),
    "window": (("window", True, False),),
    "split": (("atomic", False, True), ("none", True, False)),
    "split_window": (("window", False, True), ("none", True, False)),
    "tent": (("tent", True, False),),
    "split_tent": (("tent", False, True), ("none", True, False)),
    "interleaved": (("atomic", True, True),),
    "tent_interleaved": (("tent", True, True),),
}
WINDOWED = ("window", "tent")  # value_grad kinds that accumulate a pixel window and add it by a matmul
# (block_q, num_warps) of the point-gradient kernel of the split variants (block_q None: the d_value kernel's),
# for 16-lane chunks and for one 64-lane block per head (chunk 0). H200, V=21, S=16384, SV3D points, fp32
# (2026-12-04 03:21 UTC): chunked 10.47 ms at (16, 4), 11.42 at (16, 2), 11.93 at (32, 4); one block 11.80 at
# 8 warps (H100, 2026-11-25: 12.0 ms at 8 warps, 19.1 at 4). See docs/deformable.md.
SPLIT_POINT_GRADS_CONFIG = (16, 4)
SPLIT_POINT_GRADS_CONFIG_UNCHUNKED = (None, 8)
TENT_WINDOW_PARTS = 1  # "tent": the window's weights, matmul and atomics in this many bands of rows
WINDOW_SIZE = 8  # window of at most WINDOW_SIZE x WINDOW_SIZE pixels per (program, view, level)


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def window_shape(level_shape, size=WINDOW_SIZE):
    """(wy, wx) of a level's window: powers of two, at most ``size`` and at most the map."""
    return min(size, _floor_pow2(level_shape[0])), min(size, _floor_pow2(level_shape[1]))


def _backward_kernel(*refs, dims, shapes, windows, block_q, chunks, value_grad, point_grads, views_in_grid,
                     interpret, atomic_add, precision, parts, unroll):
    """One program: block_q queries (consecutive in the query order) of one (b, h), and one view
    (``views_in_grid``) or all views in a loop. Refs: value, reference points, offsets, weights, mask, order,
    cotangent, [d_value zeros (aliased), d_value], [d_reference_points per head, d_offsets, d_weights]."""
    value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, g_ref, *outs = refs
    # Skip the zeros aliased to outputs (d_value; d_offsets and d_weights with views_in_grid point gradients).
    outs = outs[(value_grad != "none") + 2 * (point_grads and views_in_grid):]
    d_value_ref = None
    if value_grad != "none":
        d_value_ref, *outs = outs
    program = functools.partial(_backward_program, value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, g_ref,
                                d_value_ref, outs, dims=dims, shapes=shapes, windows=windows, block_q=block_q,
                                chunks=chunks, views_in_grid=views_in_grid, interpret=interpret, atomic_add=atomic_add,
                                precision=precision, parts=parts, unroll=unroll)
    # Program ids are read here, outside lax.cond (the interpreter only discharges them at the top level).
    first, block, last = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    if point_grads and views_in_grid and value_grad != "none":
        # Interleaved: even programs along axis 0 accumulate d_value, odd ones the point gradients, so the two
        # kinds of work (atomic-bound and gather-bound) run side by side on the SMs.
        lax.cond(first % 2 == 0,
                 lambda: program(first // 2, block, last, value_grad=value_grad, point_grads=False),
                 lambda: program(first // 2, block, last, value_grad="none", point_grads=True))
    else:
        program(first, block, last, value_grad=value_grad, point_grads=point_grads)


def _backward_program(value_ref, ref_ref, off_ref, attn_ref, mask_ref, order_ref, g_ref, d_value_ref, outs, h, block,
                      last, *,
                      dims, shapes, windows, block_q, chunks, value_grad, point_grads, views_in_grid, interpret,
                      atomic_add, precision, parts, unroll):
    """The work of one program for head h (see _backward_kernel)."""
    v_count, q_count, length, heads, c, nl, p = dims
    b = last // v_count if views_in_grid else last
    q, q_in, qc = tri._program_queries(order_ref, b, q_count, block_q, block)  # q: store index, qc: clipped
    point_base = ((b * q_count + qc) * heads + h) * (nl * p)
    lanes = tri._chunk_lanes(h, c, chunks, block_q)  # per lane chunk: (cols, lane mask or None)
    point_col = jnp.arange(nl * p, dtype=jnp.int32)[None, :]  # (1, NL*P): one-hot columns of the accumulators

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
                atomic_add(d_value_ref, (rows, cols), contribution,
                           mask=tri._lane_mask(add & q_in, lane, cols.shape))

    def view_step(bv, accs):
        valid, ref_u, ref_v, gs = tri._view_cotangent(mask_ref, ref_ref, g_ref, bv=bv, q_count=q_count, q_in=q_in,
                                                      qc=qc, lanes=lanes)
        if value_grad in WINDOWED:
            count = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
            mean_u = jnp.sum(jnp.where(valid, ref_u, 0.0)) / count
            mean_v = jnp.sum(jnp.where(valid, ref_v, 0.0)) / count
        d_ref_uv = (jnp.zeros((block_q,), jnp.float32),) * 2 if point_grads else None
        for level, ((hl, wl), start, (wy, wx)) in enumerate(zip(shapes, _level_starts(shapes), windows,
                                                                strict=True)):
            weights = window_pixel = ox = oy = window_x = window_y = None
            if value_grad in WINDOWED:
                # Window origin: the block's mean reference pixel at the window's centre, clamped into the map.
                ox = jnp.clip(jnp.floor(jnp.clip(mean_u, -1.0, 2.0) * wl - 0.5).astype(jnp.int32) - wx // 2 + 1,
                              0, wl - wx)
                oy = jnp.clip(jnp.floor(jnp.clip(mean_v, -1.0, 2.0) * hl - 0.5).astype(jnp.int32) - wy // 2 + 1,
                              0, hl - wy)
                window_pixel = jnp.arange(wy * wx, dtype=jnp.int32)[None, :]  # (1, wy*wx)
                weights = jnp.zeros((block_q, wy * wx), jnp.float32)
                if value_grad == "tent":  # (pixel, query) weights in bands of window rows
                    bands = min(parts, wy)
                    band = jnp.arange(wy * wx // bands, dtype=jnp.int32)[:, None]
                    window_x = (ox + band % wx).astype(jnp.float32)  # (band pixels, 1)
                    window_y = tuple((oy + part * (wy // bands) + band // wx).astype(jnp.float32)
                                     for part in range(bands))
                    weights = (jnp.zeros((wy * wx // bands, block_q), jnp.float32),) * bands

            def point_step(point, carry, level=level, hl=hl, wl=wl, start=start, wy=wy, wx=wx, ox=ox, oy=oy,
                           window_pixel=window_pixel, window_x=window_x, window_y=window_y):
                accs, d_ref_uv, weights = carry
                a, u, v = tri._point(off_ref, attn_ref, point_base + level * p + point, valid, ref_u, ref_v)
                if value_grad == "tent":
                    # The bilinear weight of pixel (i, j) is the product of tents max(0, 1 - |i - x|), so the
                    # window needs no corner indices (and no one-hot compare/select per corner).
                    tent_x = jnp.maximum(1.0 - jnp.abs(window_x - (u * wl - 0.5)[None, :]), 0.0) * a[None, :]
                    weights = tuple(
                        tri.fused_multiply_add(jnp.maximum(1.0 - jnp.abs(row - (v * hl - 0.5)[None, :]), 0.0),
                                               tent_x, part, interpret=interpret)
                        for part, row in zip(weights, window_y, strict=True))
                    # Which corners fall in the window, from floor(x) and floor(y) (as bilinear_corners computes
                    # them) in the float domain: no integer division of pixel indices per corner.
                    x0 = jnp.floor(jnp.clip(u * wl - 0.5, -2.0, wl + 1.0)) - ox.astype(jnp.float32)
                    y0 = jnp.floor(jnp.clip(v * hl - 0.5, -2.0, hl + 1.0)) - oy.astype(jnp.float32)
                    in_x = ((x0 >= 0.0) & (x0 < wx), (x0 >= -1.0) & (x0 < wx - 1))  # corner x0, x0 + 1
                    in_y = ((y0 >= 0.0) & (y0 < wy), (y0 >= -1.0) & (y0 < wy - 1))
                    corner_in_window = [in_y[dy] & in_x[dx] for dy in (0, 1) for dx in (0, 1)]
                sums = (jnp.zeros((block_q,), jnp.float32),) * 3
                corners = bilinear_corners(u, v, hl, wl, clamp_pixels=tri.CLAMP_PIXELS or value_grad == "window")
                for corner, (pixel, inside, bilinear, dbdu, dbdv) in enumerate(corners):
                    pixel_rows = bv * length + start + pixel
                    if point_grads:
                        samples = tuple(
                            plgpu.load(value_ref.at[jnp.broadcast_to(pixel_rows[:, None], cols.shape), cols],
                                       mask=tri._lane_mask(inside, lane, cols.shape), other=0.0)
                            for cols, lane in lanes)
                        sums = tri._corner_gradient(gs, samples, bilinear, dbdu, dbdv, *sums, interpret=interpret)
                    coef = a * bilinear
                    if value_grad == "atomic":
                        add_samples(pixel_rows, coef, gs, inside)
                    elif value_grad == "none":
                        pass
                    elif value_grad == "tent":  # a window corner is inside the map
                        add_samples(pixel_rows, coef, gs, inside & ~corner_in_window[corner])
                    else:
                        lx = pixel % wl - ox
                        ly = pixel // wl - oy
                        in_window = inside & (lx >= 0) & (lx < wx) & (ly >= 0) & (ly < wy)
                        local = jnp.where(in_window, ly * wx + lx, -1)
                        weights += jnp.where(local[:, None] == window_pixel, coef[:, None], 0.0)
                        add_samples(pixel_rows, coef, gs, inside & ~in_window)
                if point_grads:
                    new = tri._accumulate_point((*accs, *d_ref_uv), point_col == level * p + point, a, *sums)
                    accs, d_ref_uv = new[:3], new[3:]
                return accs, d_ref_uv, weights

            accs, d_ref_uv, weights = tri.point_loop(p, unroll, point_step, (accs, d_ref_uv, weights))
            if value_grad in WINDOWED:
                # (pixels, block_q) weights of each band (one band of the transposed matrix for "window").
                bands = weights if value_grad == "tent" else (weights.T,)
                for part, band_weights in enumerate(bands):
                    local = part * band_weights.shape[0] + jnp.arange(band_weights.shape[0], dtype=jnp.int32)
                    pixel_rows = bv * length + start + (oy + local // wx) * wl + ox + local % wx
                    touched = None if interpret else jnp.max(jnp.where(band_weights != 0.0, 1, 0), axis=1) > 0
                    for (first, width, _), (_, lane), g in zip(chunks, lanes, gs, strict=True):
                        d_window = lax.dot_general(band_weights, g, (((1,), (0,)), ((), ())), precision=precision,
                                                   preferred_element_type=jnp.float32)  # (band pixels, width)
                        window_rows = jnp.broadcast_to(pixel_rows[:, None], d_window.shape)
                        window_cols = jnp.broadcast_to((h * c + first + jnp.arange(width, dtype=jnp.int32))[None, :],
                                                       d_window.shape)
                        if interpret:
                            atomic_add(d_value_ref, (window_rows, window_cols), d_window)
                        else:
                            atomic_add(d_value_ref, (window_rows, window_cols), d_window,
                                       mask=tri._lane_mask(touched, lane, d_window.shape))
        if point_grads:
            tri._store_reference_gradient(outs[0], *d_ref_uv, bv=bv, q_count=q_count, q=q, heads=heads, h=h,
                                          q_in=q_in, point_col=point_col, interpret=interpret)
        return accs

    zeros = jnp.zeros((block_q, nl * p), jnp.float32)
    accs = (zeros, zeros, zeros) if point_grads else None
    if views_in_grid:
        accs = view_step(last, accs)
    else:
        accs = lax.fori_loop(0, v_count, lambda view, accs: view_step(b * v_count + view, accs), accs)
    if point_grads and views_in_grid:  # one view per program: add into the zeros
        attn_index, off_index = tri.point_gradient_index(b, q_count, q, heads, h, nl * p, point_col)
        d_attn_acc, d_u_acc, d_v_acc = accs
        for ref, idx, acc in ((outs[2], attn_index, d_attn_acc), (outs[1], off_index, d_u_acc),
                              (outs[1], off_index + nl * p, d_v_acc)):
            if interpret:  # block_q divides Q there: every slot is a query; distinct addresses per call
                atomic_add(ref, (idx,), acc)
            else:
                atomic_add(ref, (idx,), acc, mask=jnp.broadcast_to(q_in[:, None], idx.shape))
    elif point_grads:
        d_attn_ref, d_off_ref = outs[2], outs[1]
        tri._store_point_gradients(d_attn_ref, d_off_ref, *accs, b=b, q_count=q_count, q=q, heads=heads, h=h,
                                   points=nl * p, point_col=point_col, q_in=q_in)


def backward_call(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, order, *,
                  value_grad, point_grads, views_in_grid, block_q, num_warps, window=None, relaxed=None,
                  interpret=False, debug=False, d_value=None, chunk=None, point_unroll=None):
    """One backward kernel (see the module docstring): returns (d_value fp32 (B*V*L, H*C) or None,
    d_reference_points per head (B*V*Q*H*2,) or None, d_offsets flat or None, d_weights flat or None).

    ``d_value``: an fp32 (B*V*L, H*C) buffer to add into (default zeros); ``order``: (B, Q) int32 query order;
    ``chunk``: lanes per channel chunk (default by dtype); ``point_unroll``: points per iteration of the point
    loop (default ``BACKWARD_POINT_UNROLL``).
    """
    b, v, length, heads, c = value.shape
    dims = tri._dims(value, offsets)
    q = dims[1]
    shapes = tuple(spatial_shapes)
    windows = tuple(window_shape(s, window or WINDOW_SIZE) for s in shapes)
    if chunk is None:
        chunk = tri.BACKWARD_CHANNEL_CHUNK_16BIT if value.dtype.itemsize == 2 else tri.BACKWARD_CHANNEL_CHUNK
    chunks = tri.channel_chunks(c, chunk)
    if interpret:  # block_q divides Q: no padded slots
        block_q = min(block_q, 8)
        while q % block_q:
            block_q //= 2
    available, reason = relaxed_atomics_status()
    if relaxed is None:
        relaxed = available
    if relaxed and not available:
        raise ValueError(f"relaxed atomics are unavailable with this JAX: {reason}")
    # tf32x3 on tensor cores: ~fp32 accuracy; the CPU interpreter takes an ordinary fp32 precision.
    precision = lax.Precision.HIGHEST if interpret else lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    kernel = functools.partial(
        _backward_kernel, dims=dims, shapes=shapes, windows=windows, block_q=block_q, chunks=chunks,
        value_grad=value_grad, point_grads=point_grads, views_in_grid=views_in_grid, interpret=interpret,
        atomic_add=relaxed_atomic_add if relaxed else plgpu.atomic_add, precision=precision,
        parts=TENT_WINDOW_PARTS, unroll=point_unroll or tri.BACKWARD_POINT_UNROLL)
    f32 = lambda n: jax.ShapeDtypeStruct((n,), jnp.float32)
    out_shape, args, aliases = [], list(tri._flat_inputs(value, reference_points, offsets, attention_weights, mask)), {}
    args += [order.reshape(-1), g.reshape(b * v * q, heads * c)]
    if value_grad != "none":
        out_shape.append(jax.ShapeDtypeStruct((b * v * length, heads * c), jnp.float32))
        aliases = {len(args): 0}
        args.append(jnp.zeros((b * v * length, heads * c), jnp.float32) if d_value is None else d_value)
    if point_grads:
        # d_reference_points per head with NL*P slots of padding (see tri._store_reference_gradient); d_offsets
        # planar (B, Q, H, 2, NL*P), see tri.point_gradient_index.
        out_shape += [f32(b * v * q * heads * 2 + dims[5] * dims[6]), f32(offsets.size), f32(attention_weights.size)]
        if views_in_grid:  # programs of different views add into d_offsets / d_weights: zeros, aliased
            first = len(out_shape) - 2
            aliases.update({len(args): first, len(args) + 1: first + 1})
            args += [jnp.zeros((offsets.size,), jnp.float32), jnp.zeros((attention_weights.size,), jnp.float32)]
    interleaved = point_grads and views_in_grid and value_grad != "none"
    name = {("atomic", True): "deformable_sample_bwd", ("window", True): "deformable_sample_bwd_window",
            ("atomic", False): "deformable_sample_bwd_dvalue", ("window", False): "deformable_sample_bwd_dvalue_window",
            ("tent", True): "deformable_sample_bwd_tent", ("tent", False): "deformable_sample_bwd_dvalue_tent",
            ("none", True): "deformable_sample_bwd_point_grads"}[value_grad, point_grads]
    if point_grads and views_in_grid:
        name += "_interleaved" if interleaved else "_views"
    results = pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid=(2 * heads if interleaved else heads, pl.cdiv(q, block_q), b * v if views_in_grid else b),
        input_output_aliases=aliases,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        debug=debug,
        name=name,
    )(*args)
    d_value = results[0] if value_grad != "none" else None
    if not point_grads:
        return d_value, None, None, None
    d_ref_heads, d_off, d_attn = results[-3:]
    return (d_value, d_ref_heads[:b * v * q * heads * 2], tri.planar_offsets(d_off, offsets.shape).reshape(-1),
            d_attn)


def backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, order, *, variant,
             block_q, num_warps, window=None, relaxed=None, interpret=False, debug=False, chunk=None,
             point_grads_config=None, point_unroll=None):
    """Gradients (d_value, d_reference_points, d_offsets, d_attention_weights) in the inputs' dtypes, by the
    kernels of ``VARIANT_KERNELS[variant]``. ``point_grads_config``: (block_q or None, num_warps) of a split
    variant's point-gradient kernel (default SPLIT_POINT_GRADS_CONFIG, or SPLIT_POINT_GRADS_CONFIG_UNCHUNKED for
    chunk 0); ``chunk``: lanes per channel chunk (default by dtype, see ``deformable_sample_triton``)."""
    b, v, length, heads, c = value.shape
    q = offsets.shape[1]
    d_value = None
    point = None
    if chunk is None:
        chunk = tri.BACKWARD_CHANNEL_CHUNK_16BIT if value.dtype.itemsize == 2 else tri.BACKWARD_CHANNEL_CHUNK
    point_q, point_warps = point_grads_config or (SPLIT_POINT_GRADS_CONFIG if chunk else
                                                  SPLIT_POINT_GRADS_CONFIG_UNCHUNKED)
    point_q = min(point_q, tri._next_pow2(q)) if point_q else block_q
    for value_grad, point_grads, views_in_grid in VARIANT_KERNELS[variant]:
        split_half = value_grad == "none"  # the point-gradient kernel of a split variant
        result = backward_call(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, order,
                               value_grad=value_grad, point_grads=point_grads, views_in_grid=views_in_grid,
                               block_q=point_q if split_half else block_q, window=window,
                               relaxed=relaxed, interpret=interpret, debug=debug, chunk=chunk,
                               num_warps=point_warps if split_half else num_warps, point_unroll=point_unroll)
        d_value = result[0] if result[0] is not None else d_value
        point = result[1:] if point_grads else point
    d_ref_heads, d_off, d_attn = point
    d_ref = d_ref_heads.reshape(b, v, q, heads, 2).sum(axis=3)
    return (d_value.reshape(value.shape).astype(value.dtype),
            d_ref.astype(reference_points.dtype),
            d_off.reshape(offsets.shape).astype(offsets.dtype),
            d_attn.reshape(attention_weights.shape).astype(attention_weights.dtype))
