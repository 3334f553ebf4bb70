"""TPU (Pallas Mosaic) backward of :func:`geolrm_kernels.deformable.deformable_sample`, without atomics.

Same grid, chunk ranges and tent-window weights W (block_q, chunk) as the forward
(:mod:`geolrm_kernels.tpu.deformable_forward`). Per value chunk, with the cotangent block g (block_q, C):

- ``d_value^T[c, k] += sum_q g[q, c] W[q, k]``: an MXU product with the transposed cotangent (C, block_q),
  added to the chunk of d_value read and written back by DMA (HBM, zero-initialized by aliasing). Programs
  of one (scene, view, head) run in sequence (query-block and view axes "arbitrary"; only the (scene, head)
  axis is parallel over TensorCores), so the read-modify-write needs no atomics;
- ``S = g @ value_chunk`` (block_q, chunk): the cotangent's dot with every pixel; then per point
  ``d_a = sum_k tent_x tent_y S``, ``d_x = a sum_k tent_x' tent_y S``, ``d_y = a sum_k tent_x tent_y' S``
  (lane reductions), with the reference's one-sided derivative at pixel centres (``tent'``: -1 on [0, 1),
  +1 on [-1, 0) of x - j, as the floor convention of ``bilinear_corners``).

d_offsets and d_attention_weights, shared by the views, accumulate in their output blocks over the view axis
(innermost); d_reference_points is written per (scene, view, head) and summed over heads by XLA.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.tpu import deformable_forward as fwd
from geolrm_kernels.tpu.config import DeformableTpuConfig
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


def tent_slope(d):
    """d tent(j - x) / dx at d = x - j, one-sided as the reference's floor convention."""
    return jnp.where((d >= -1.0) & (d < 0.0), 1.0, jnp.where((d >= 0.0) & (d < 1.0), -1.0, 0.0))


def _backward_kernel(ranges_ref, ref_ref, mask_ref, offu_ref, offv_ref, w_ref, g_ref, gt_ref, value_hbm,
                     dvalue_in, d_offu_ref, d_offv_ref, d_w_ref, d_ref_ref, dvalue_hbm, vbuf, dbuf, sems, *,
                     shapes, heads, views, nqb, points, chunk):
    del dvalue_in  # aliased to dvalue_hbm (zeros)
    bh, qb, view, bvh = fwd.grid_indices(heads, views)

    @pl.when(view == 0)
    def _():
        for r in (d_offu_ref, d_offv_ref, d_w_ref):
            r[...] = jnp.zeros_like(r)

    ref, mask = ref_ref[...], mask_ref[...]
    g = g_ref[...].astype(jnp.float32)
    gt = gt_ref[...].astype(jnp.float32)
    block_q, nlp = d_w_ref.shape
    lane = lax.broadcasted_iota(jnp.int32, (block_q, nlp), 1)
    d_u = d_v = d_a = jnp.zeros((block_q, nlp), jnp.float32)
    for level, (shape, start) in enumerate(zip(shapes, fwd.level_starts(shapes), strict=True)):
        hl, wl = shape
        x, y = fwd.level_samples(ref, mask, offu_ref[...], offv_ref[...], level, shape, points)
        a = w_ref[:, level * points:(level + 1) * points]
        first, count = fwd.chunk_range(ranges_ref, ((bh * nqb + qb) * views + view) * len(shapes) + level)

        def body(i, sums, x=x, y=y, a=a, start=start, shape=shape, first=first, level=level, hl=hl, wl=wl):
            d_u, d_v, d_a = sums
            chunk_start = pl.multiple_of((first + i) * chunk, chunk)
            window = pl.ds(chunk_start, chunk)
            read_value = pltpu.make_async_copy(value_hbm.at[bvh, :, window], vbuf, sems.at[0])
            read_grad = pltpu.make_async_copy(dvalue_hbm.at[bvh, :, window], dbuf, sems.at[1])
            read_value.start()
            read_grad.start()
            col, row = fwd.chunk_pixels(chunk_start, start, shape, chunk)
            read_value.wait()
            s = lax.dot_general(g, vbuf[...].astype(jnp.float32), (((1,), (0,)), ((), ())), precision=fwd.HIGHEST,
                                preferred_element_type=jnp.float32)  # (block_q, chunk)
            weights = jnp.zeros((block_q, chunk), jnp.float32)
            for p in range(points):
                ax, ay = col - x[:, p:p + 1], row - y[:, p:p + 1]
                tx, ty = fwd.tent(ax), fwd.tent(ay)
                txy = tx * ty
                weights += a[:, p:p + 1] * txy
                at = lane == level * points + p
                d_a = d_a + jnp.where(at, jnp.sum(txy * s, axis=1, keepdims=True), 0.0)
                # ax = j - x, so x - j = -ax.
                d_u = d_u + jnp.where(at, (a[:, p:p + 1] * wl) * jnp.sum(tent_slope(-ax) * ty * s, axis=1,
                                                                            keepdims=True), 0.0)
                d_v = d_v + jnp.where(at, (a[:, p:p + 1] * hl) * jnp.sum(tx * tent_slope(-ay) * s, axis=1,
                                                                            keepdims=True), 0.0)
            read_grad.wait()
            dbuf[...] += lax.dot_general(gt, weights, (((1,), (0,)), ((), ())), precision=fwd.HIGHEST,
                                         preferred_element_type=jnp.float32)
            write = pltpu.make_async_copy(dbuf, dvalue_hbm.at[bvh, :, window], sems.at[1])
            write.start()
            write.wait()
            return d_u, d_v, d_a

        d_u, d_v, d_a = lax.fori_loop(0, count, body, (d_u, d_v, d_a))
    d_offu_ref[...] += d_u
    d_offv_ref[...] += d_v
    d_w_ref[...] += d_a
    pair = lax.broadcasted_iota(jnp.int32, d_ref_ref.shape, 1)
    d_ref_ref[...] = jnp.where(pair == 0, jnp.sum(d_u, axis=1, keepdims=True), jnp.sum(d_v, axis=1, keepdims=True))


def backward(value, reference_points, offsets, attention_weights, mask, spatial_shapes, g, order=None, *,
             interpret=False, config: DeformableTpuConfig | None = None):
    """Gradients (d_value, d_reference_points, d_offsets, d_attention_weights) in the inputs' dtypes, for the
    output cotangent g (B, V, Q, H, C); same contract as the reference backward."""
    config = config or DeformableTpuConfig()
    b, v, length, heads, c = value.shape
    q = reference_points.shape[2]
    nl, points = offsets.shape[3:5]
    lay = fwd.prepare(reference_points, offsets, attention_weights, mask, spatial_shapes, order, config)
    q_pad = lay.ref.shape[1]
    nqb = q_pad // config.block_q
    vt = fwd.value_to_kernel(value, config)
    g_rows = fwd.rows_to_kernel(g, lay.order, q_pad)  # (B*V*H, Qp, C)
    g_cols = jnp.swapaxes(g_rows, 1, 2)  # (B*V*H, C, Qp)
    bvh_of = functools.partial(fwd.value_row, heads=heads, views=v)
    nlp = nl * points
    head_block = pl.BlockSpec((None, config.block_q, nlp), lambda bh, qb, view, ranges: (bh, qb, 0))
    kernel = functools.partial(_backward_kernel, shapes=tuple(spatial_shapes), heads=heads, views=v, nqb=nqb,
                               points=points, chunk=config.chunk)
    f32 = jnp.float32
    d_offu, d_offv, d_w, d_ref, d_value = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((b * heads, q_pad, nlp), f32)] * 3 + [
            jax.ShapeDtypeStruct((b * v * heads, q_pad, 2), f32), jax.ShapeDtypeStruct(vt.shape, f32)],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b * heads, nqb, v),
            in_specs=fwd.query_specs(b, heads, v, nl, points, config.block_q) + [
                pl.BlockSpec((None, config.block_q, c), lambda bh, qb, view, ranges: (bvh_of(bh, view), qb, 0)),
                pl.BlockSpec((None, c, config.block_q), lambda bh, qb, view, ranges: (bvh_of(bh, view), 0, qb)),
                pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=[head_block] * 3 + [
                pl.BlockSpec((None, config.block_q, 2), lambda bh, qb, view, ranges: (bvh_of(bh, view), qb, 0)),
                pl.BlockSpec(memory_space=pl.ANY)],
            scratch_shapes=[pltpu.VMEM((c, config.chunk), value.dtype), pltpu.VMEM((c, config.chunk), f32),
                            pltpu.SemaphoreType.DMA((2,))]),
        # Operand 9 (counting the scalar-prefetch ranges as 0): the zeros become d_value.
        input_output_aliases={9: 4},
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary")),
        interpret=fwd.interpret_arg(interpret),
        name="deformable_sample_backward_tpu",
    )(lay.ranges, lay.ref, lay.mask, lay.offset_u, lay.offset_v, lay.weights, g_rows, g_cols, vt,
      jnp.zeros(vt.shape, f32))
    d_value = jnp.transpose(d_value.reshape(b, v, heads, c, -1)[..., :length], (0, 1, 4, 2, 3))
    inverse = jnp.argsort(lay.order, axis=-1)
    unpermute = jax.vmap(lambda t, i: jnp.take(t, i, axis=-2))

    def per_query(x):  # (B*H, Qp, NL*P) -> (B, Q, H, NL, P)
        x = unpermute(x.reshape(b, heads, q_pad, nlp)[:, :, :q], inverse)
        return jnp.transpose(x, (0, 2, 1, 3)).reshape(b, q, heads, nl, points)

    d_off = jnp.stack([per_query(d_offu), per_query(d_offv)], -1)
    d_ref = unpermute(d_ref.reshape(b, v, heads, q_pad, 2)[:, :, :, :q].sum(2), inverse)
    return (d_value.astype(value.dtype), d_ref.astype(reference_points.dtype), d_off.astype(offsets.dtype),
            per_query(d_w).astype(attention_weights.dtype))
