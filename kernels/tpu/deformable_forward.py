"""TPU (Pallas Mosaic) forward of :func:`geolrm_kernels.deformable.deformable_sample`.

Mosaic has no per-lane gather, so bilinear sampling is written as matrix products: the bilinear weight of
pixel (i, j) for a sample at pixel coordinates (x, y) is the product of tents ``max(0, 1 - |j - x|) *
max(0, 1 - |i - y|)`` (exactly zero padding and ``align_corners=False`` sampling), so for a block of queries

    out[q, c] = sum_k W[q, k] value[k, c],   W[q, k] = sum_p a[q, p] tent(j_k - x[q, p]) tent(i_k - y[q, p])

over the pixels k of a level: the VPU builds W chunk by chunk of ``chunk`` pixels, the MXU contracts it with the
value chunk. Only the chunks holding a row that a sample of the block touches are visited: their range per
(scene, view, head, query block, level) is computed by XLA before the call and scalar-prefetched into SMEM,
the kernel DMAs those value chunks from HBM (the value map stays in HBM). Queries are visited in the op's
spatial order (``query_order``), so a block's samples, and its chunk range, are compact.

Layout (XLA copies around the call): value as (B*V*H, C, Lp) (pixels on lanes, L padded to a multiple of
``chunk``); per-query inputs as (rows, Q, NL*P) blocks; output (B*V*H, Qp, C). Grid (B*H, Q blocks, V), the
view innermost (the backward accumulates its shared point gradients over it).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from geolrm_kernels.tpu.config import DeformableTpuConfig
from geolrm_kernels.tpu.interpret import interpret_arg
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

MASKED_LOCATION = -4.0  # as the reference: outside every image for all corners
HIGHEST = lax.Precision.HIGHEST
_COUNT_BITS = 16  # ranges are packed as first_chunk << 16 | num_chunks (SMEM is 1 MiB on v4 .. v6e)


def level_starts(spatial_shapes):
    sizes = [h * w for h, w in spatial_shapes]
    return tuple(int(s) for s in np.cumsum([0] + sizes[:-1]))


class Layout(NamedTuple):
    """The op's operands in the kernels' layout (see the module docstring)."""

    ref: jnp.ndarray  # (B*V, Qp, 2) fp32 reference points (u, v)
    mask: jnp.ndarray  # (B*V, Qp, 1) fp32, 1 where (b, v, q) is sampled
    offset_u: jnp.ndarray  # (B*H, Qp, NL*P) fp32
    offset_v: jnp.ndarray  # (B*H, Qp, NL*P) fp32
    weights: jnp.ndarray  # (B*H, Qp, NL*P) fp32
    ranges: jnp.ndarray  # (B*H*nqb*V*NL,) int32 packed chunk ranges, in grid order
    order: jnp.ndarray  # (B, Q) int32 the query order used


def _query_ranges(ref, mask, offsets, spatial_shapes, config: DeformableTpuConfig, q_pad: int):
    """Packed (first chunk, number of chunks) of the pixel rows touched by each block's samples."""
    b, v, q, _ = ref.shape
    heads, nl, p = offsets.shape[2:5]
    nqb = q_pad // config.block_q
    out = []
    for level, ((hl, wl), start) in enumerate(zip(spatial_shapes, level_starts(spatial_shapes), strict=True)):
        loc = ref[:, :, :, None, None, :] + offsets[:, None, :, :, level]  # (B, V, Q, H, P, 2)
        x = jnp.clip(loc[..., 0] * wl - 0.5, -2.0, wl + 1.0)
        y = jnp.clip(loc[..., 1] * hl - 0.5, -2.0, hl + 1.0)
        x0, y0 = jnp.floor(x), jnp.floor(y)
        touches = (mask[:, :, :, None, None] & (x0 >= -1.0) & (x0 <= wl - 1.0) & (y0 >= -1.0) & (y0 <= hl - 1.0))
        lo = jnp.where(touches, jnp.maximum(y0, 0.0), 1e9).min(-1)  # (B, V, Q, H)
        hi = jnp.where(touches, jnp.minimum(y0 + 1.0, hl - 1.0), -1e9).max(-1)
        pad = ((0, 0), (0, 0), (0, q_pad - q), (0, 0))
        lo = jnp.pad(lo, pad, constant_values=1e9).reshape(b, v, nqb, config.block_q, heads).min(3)
        hi = jnp.pad(hi, pad, constant_values=-1e9).reshape(b, v, nqb, config.block_q, heads).max(3)
        first = (start + lo.clip(0, hl).astype(jnp.int32) * wl) // config.chunk
        end = -(-(start + (hi.clip(-1, hl - 1).astype(jnp.int32) + 1) * wl) // config.chunk)
        count = jnp.where(hi >= lo, end - first, 0)
        out.append((jnp.where(count > 0, first, 0) << _COUNT_BITS) | count)  # (B, V, nqb, H)
    packed = jnp.stack(out, -1)  # (B, V, nqb, H, NL)
    return jnp.transpose(packed, (0, 3, 2, 1, 4)).reshape(-1)  # grid order: (b, h), query block, view, level


def prepare(reference_points, offsets, attention_weights, mask, spatial_shapes, order,
            config: DeformableTpuConfig) -> Layout:
    """Permutes the queries into ``order`` (None: as given), pads Q to a multiple of block_q (padded queries
    masked) and lays the per-query operands out for the kernels."""
    b, v, q, _ = reference_points.shape
    heads, nl, p = offsets.shape[2:5]
    if order is None:
        order = jnp.broadcast_to(jnp.arange(q, dtype=jnp.int32), (b, q))
    take = jax.vmap(lambda x, o: jnp.take(x, o, axis=0))
    ref = jax.vmap(lambda r, o: jnp.take(r, o, axis=1))(reference_points.astype(jnp.float32), order)
    msk = jax.vmap(lambda m, o: jnp.take(m, o, axis=1))(mask, order)
    off = take(offsets.astype(jnp.float32), order)
    wts = take(attention_weights.astype(jnp.float32), order)
    q_pad = -(-q // config.block_q) * config.block_q
    ranges = _query_ranges(ref, msk, off, spatial_shapes, config, q_pad)
    ref = jnp.where(msk[..., None], ref, MASKED_LOCATION)  # masked NaNs never reach the kernel
    pad_q = lambda x, axis: jnp.pad(x, [(0, q_pad - q if i == axis else 0) for i in range(x.ndim)])
    per_head = lambda x: pad_q(jnp.transpose(x.reshape(b, q, heads, nl * p), (0, 2, 1, 3)), 2).reshape(
        b * heads, q_pad, nl * p)
    return Layout(ref=pad_q(ref, 2).reshape(b * v, q_pad, 2),
                  mask=pad_q(msk.astype(jnp.float32), 2).reshape(b * v, q_pad, 1),
                  offset_u=per_head(off[..., 0]), offset_v=per_head(off[..., 1]), weights=per_head(wts),
                  ranges=ranges, order=order)


def value_to_kernel(value, config: DeformableTpuConfig):
    """(B, V, L, H, C) -> (B*V*H, C, Lp), pixels on lanes, L zero-padded to a multiple of the chunk."""
    b, v, length, heads, c = value.shape
    lp = -(-length // config.chunk) * config.chunk
    vt = jnp.transpose(value, (0, 1, 3, 4, 2))
    return jnp.pad(vt, ((0, 0),) * 4 + ((0, lp - length),)).reshape(b * v * heads, c, lp)


def rows_from_kernel(x, b, v, heads, q, order):
    """(B*V*H, Qp, C) in query order -> (B, V, Q, H, C) in the caller's query order."""
    x = x.reshape(b, v, heads, -1, x.shape[-1])[:, :, :, :q]
    inverse = jnp.argsort(order, axis=-1)
    x = jax.vmap(lambda t, i: jnp.take(t, i, axis=2))(x, inverse)
    return jnp.transpose(x, (0, 1, 3, 2, 4))


def rows_to_kernel(x, order, q_pad):
    """(B, V, Q, H, C) -> (B*V*H, Qp, C) in query order (padded rows zero)."""
    b, v, q, heads, c = x.shape
    x = jax.vmap(lambda t, o: jnp.take(t, o, axis=1))(x, order)
    x = jnp.transpose(x, (0, 1, 3, 2, 4))
    return jnp.pad(x, ((0, 0),) * 3 + ((0, q_pad - q), (0, 0))).reshape(b * v * heads, q_pad, c)


def level_samples(ref, mask, offset_u, offset_v, level, shape, points):
    """Pixel coordinates (x, y), each (block_q, P), of one level's samples (masked ones far outside)."""
    hl, wl = shape
    cols = slice(level * points, (level + 1) * points)
    valid = mask > 0.0  # (bq, 1)
    u = jnp.where(valid, ref[:, 0:1] + offset_u[:, cols], MASKED_LOCATION)
    v = jnp.where(valid, ref[:, 1:2] + offset_v[:, cols], MASKED_LOCATION)
    return jnp.clip(u * wl - 0.5, -2.0, wl + 1.0), jnp.clip(v * hl - 0.5, -2.0, hl + 1.0)


def chunk_pixels(chunk_start, level_start, shape, chunk: int):
    """(column j, row i), each (1, chunk) fp32, of the chunk's pixels in the level; rows far outside for
    pixels of other levels or of the padding."""
    hl, wl = shape
    k = (lax.broadcasted_iota(jnp.int32, (1, chunk), 1) + (chunk_start - level_start)).astype(jnp.float32)
    row = jnp.floor((k + 0.5) * (1.0 / wl))
    col = k - row * wl
    row = jnp.where((k >= 0.0) & (k < float(hl * wl)), row, -1e4)
    return col, row


def tent(d):
    return jnp.maximum(1.0 - jnp.abs(d), 0.0)


def chunk_range(ranges_ref, index):
    packed = ranges_ref[index]
    return packed >> _COUNT_BITS, packed & ((1 << _COUNT_BITS) - 1)


def value_row(bh, view, heads: int, views: int):
    """(b*H + h, view) -> (b*V + v)*H + h, the row of value / output. lax.div / lax.rem (non-negative
    operands): jnp's // and % lower through sign, which Mosaic lowers only for a known TPU generation."""
    return (lax.div(bh, heads) * views + view) * heads + lax.rem(bh, heads)


def grid_indices(heads: int, views: int):
    """(b*H + h, query block, view, row of value / output) of this program."""
    bh, qb, view = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    return bh, qb, view, value_row(bh, view, heads, views)


def _forward_kernel(ranges_ref, ref_ref, mask_ref, offu_ref, offv_ref, w_ref, value_hbm, out_ref, vbuf, acc_ref,
                    sem, *, shapes, heads, views, nqb, points, chunk):
    bh, qb, view, bvh = grid_indices(heads, views)
    acc_ref[...] = jnp.zeros_like(acc_ref)
    ref, mask = ref_ref[...], mask_ref[...]
    for level, (shape, start) in enumerate(zip(shapes, level_starts(shapes), strict=True)):
        x, y = level_samples(ref, mask, offu_ref[...], offv_ref[...], level, shape, points)
        a = w_ref[:, level * points:(level + 1) * points]
        first, count = chunk_range(ranges_ref, ((bh * nqb + qb) * views + view) * len(shapes) + level)

        def body(i, carry, x=x, y=y, a=a, start=start, shape=shape, first=first):
            chunk_start = pl.multiple_of((first + i) * chunk, chunk)
            copy = pltpu.make_async_copy(value_hbm.at[bvh, :, pl.ds(chunk_start, chunk)], vbuf, sem)
            copy.start()
            col, row = chunk_pixels(chunk_start, start, shape, chunk)
            weights = jnp.zeros((x.shape[0], chunk), jnp.float32)
            for p in range(points):
                weights += a[:, p:p + 1] * tent(col - x[:, p:p + 1]) * tent(row - y[:, p:p + 1])
            copy.wait()
            acc_ref[...] += lax.dot_general(weights, vbuf[...].astype(jnp.float32), (((1,), (1,)), ((), ())),
                                            precision=HIGHEST, preferred_element_type=jnp.float32)
            return carry

        lax.fori_loop(0, count, body, 0)
    out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def query_spec(block_q: int, width: int, rows_of):
    """BlockSpec of a (rows, Qp, width) per-query operand; rows_of(bh, view) -> its row."""
    return pl.BlockSpec((None, block_q, width), lambda bh, qb, view, ranges: (rows_of(bh, view), qb, 0))


def query_specs(b, heads, views, nl, points, block_q):
    per_view = lambda bh, view: lax.div(bh, heads) * views + view
    per_head = lambda bh, view: bh
    return [query_spec(block_q, 2, per_view), query_spec(block_q, 1, per_view)] + \
        [query_spec(block_q, nl * points, per_head)] * 3


def forward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, order=None, *,
            interpret=False, config: DeformableTpuConfig | None = None):
    """(B, V, Q, H, C) in value.dtype; contract of ``deformable_sample`` with a (B, V, Q) bool ``mask``."""
    config = config or DeformableTpuConfig()
    b, v, length, heads, c = value.shape
    q = reference_points.shape[2]
    nl, points = offsets.shape[3:5]
    lay = prepare(reference_points, offsets, attention_weights, mask, spatial_shapes, order, config)
    q_pad = lay.ref.shape[1]
    nqb = q_pad // config.block_q
    vt = value_to_kernel(value, config)
    kernel = functools.partial(_forward_kernel, shapes=tuple(spatial_shapes), heads=heads, views=v, nqb=nqb,
                               points=points, chunk=config.chunk)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b * v * heads, q_pad, c), value.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b * heads, nqb, v),
            in_specs=query_specs(b, heads, v, nl, points, config.block_q) + [pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=pl.BlockSpec((None, config.block_q, c), lambda bh, qb, view, ranges: (
                value_row(bh, view, heads, v), qb, 0)),
            scratch_shapes=[pltpu.VMEM((c, config.chunk), value.dtype), pltpu.VMEM((config.block_q, c), jnp.float32),
                            pltpu.SemaphoreType.DMA]),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel")),
        interpret=interpret_arg(interpret),
        name="deformable_sample_forward_tpu",
    )(lay.ranges, lay.ref, lay.mask, lay.offset_u, lay.offset_v, lay.weights, vt)
    return rows_from_kernel(out, b, v, heads, q, lay.order)
