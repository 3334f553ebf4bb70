"""TPU (Pallas Mosaic) backward of the splatter's rasterizer, with a segment sum instead of atomics.

Same programs, chunks and (256 pixels, chunk entries) blocks as :mod:`geolrm_kernels.tpu.rasterize_forward`.
Each tile walks its list back to front from the chunk of its last blended entry (the per-tile maximum of the
forward's ``last``, scalar-prefetched), rebuilding T before each entry by division from the saved final T and
carrying the suffix sum of weight x cotangent (as ``backward_xla``). The prefix sums along a chunk are MXU
products with the upper-triangular ones matrix; the per-entry sums over the 256 pixels are sublane reductions.

Gradients are written per list entry, (10, capacity), never added concurrently: a chunk is read, the tile's own
entries replaced, and written back by DMA; the tiles of a camera run in sequence (axis "arbitrary"; cameras are
parallel over TensorCores) because aligned chunks straddle tile boundaries. XLA then sums the entries of each
Gaussian with a segment sum (deterministic). Entries a tile never reaches keep the zeros the buffer starts with.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.tpu import rasterize_forward as fwd
from geolrm_kernels.tpu.config import RasterizeTpuConfig
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# Columns of the packed per-pixel input: saved forward outputs and the cotangents.
IN_COLUMNS = ("transmittance", "last", "g_c0", "g_c1", "g_c2", "g_weight", "g_depth", "g_transmittance")


def _backward_kernel(start_ref, end_ref, stop_ref, feats_hbm, pixel_ref, grads_in, grads_hbm, buf, gbuf, sems, *,
                     grid_x: int, num_tiles: int, chunk: int, cuda_gradient: bool):
    del grads_in  # aliased to grads_hbm (zeros)
    cam, tile = pl.program_id(0), pl.program_id(1)
    index = cam * num_tiles + tile
    start, end = start_ref[index], end_ref[index]
    px, py = fwd.pixel_coords(tile, grid_x)
    pixel = pixel_ref[...]
    col = lambda name: pixel[:, IN_COLUMNS.index(name):IN_COLUMNS.index(name) + 1]
    trans, last = col("transmittance"), col("last")
    g_c = (col("g_c0"), col("g_c1"), col("g_c2"))
    g_w, g_d = col("g_weight"), col("g_depth")
    ones = fwd.upper_ones(chunk)
    lanes = functools.partial(jnp.sum, axis=1, keepdims=True)
    pixels = functools.partial(jnp.sum, axis=0, keepdims=True)
    # Chunks up to the one holding the tile's last blended entry (stop_ref: max over the tile of `last`).
    count = fwd.num_chunks(start, jnp.minimum(jnp.maximum(stop_ref[index], start), end), chunk)

    def body(i, state):
        t_after, suffix = state
        pos, in_list, offset = fwd.chunk_entries(start, end, count - 1 - i, chunk)
        window = pl.ds(offset, chunk)
        read_feats = pltpu.make_async_copy(feats_hbm.at[cam, :, window], buf, sems.at[0])
        read_grads = pltpu.make_async_copy(grads_hbm.at[cam, :, window], gbuf, sems.at[1])
        read_feats.start()
        read_grads.start()
        read_feats.wait()
        dx, dy, power, gauss, raw, alpha, f = fwd.alpha_terms(buf, px, py)
        keep = in_list & (pos.astype(jnp.float32) < last) & (power <= 0.0) & (alpha >= fwd.ALPHA_MIN)
        one_minus = jnp.where(keep, 1.0 - alpha, 1.0)
        log_keep = jnp.log(one_minus)
        total = lanes(log_keep)
        # T before entry j = T after the chunk / prod_{i >= j} (1 - alpha_i).
        t_before = t_after * jnp.exp(fwd.prefix_sum(log_keep, ones) - log_keep - total)
        w = jnp.where(keep, alpha, 0.0) * t_before
        fval = g_c[0] * f[6] + g_c[1] * f[7] + g_c[2] * f[8] + g_w + g_d * f[9]
        wf = w * fval
        wf_sum = lanes(wf)
        later = (suffix + wf_sum) - fwd.prefix_sum(wf, ones)
        d_alpha = jnp.where(keep, t_before * fval - later / one_minus, 0.0)
        d_raw = d_alpha if cuda_gradient else jnp.where(raw < fwd.ALPHA_MAX, d_alpha, 0.0)
        # d loss / d power = d_raw o G: the per-Gaussian factors are applied after the pixel sums.
        q = d_raw * gauss
        qx, qy = q * dx, q * dy
        s0, sx, sy, sxx, sxy, syy = (pixels(t) for t in (q, qx, qy, qx * dx, qx * dy, qy * dy))
        a, b, c, o = f[2:6]
        rows = (-o * (a * sx + b * sy), -o * (c * sy + b * sx), -0.5 * o * sxx, -o * sxy, -0.5 * o * syy, s0,
                *(pixels(w * g) for g in (*g_c, g_d)))
        read_grads.wait()
        for j, row in enumerate(rows):
            gbuf[j:j + 1, :] = jnp.where(in_list, row, gbuf[j:j + 1, :])
        write = pltpu.make_async_copy(gbuf, grads_hbm.at[cam, :, window], sems.at[1])
        write.start()
        write.wait()
        return t_after * jnp.exp(-total), suffix + wf_sum

    lax.fori_loop(0, count, body, (trans, trans * col("g_transmittance")))


def backward(feats, ids, tile_start, tile_end, transmittance, last, cotangents, height: int, width: int,
             cuda_gradient: bool, *, interpret=False, config: RasterizeTpuConfig | None = None):
    """d loss / d feats (C, N, 10) for cameras batched on the leading axis: feats (C, N, 10), ids (C, capacity),
    tile ranges (C, T), the forward's transmittance and last (C, T, 256), cotangents (color (C, T, 256, 3),
    weight, depth, transmittance (C, T, 256)); contract of ``backward_xla``."""
    config = config or RasterizeTpuConfig()
    cams, num = feats.shape[:2]
    capacity = ids.shape[1]
    grid_x, grid_y = fwd.tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    chunk = config.chunk
    listed = fwd.list_features(feats, ids, chunk)
    g_color, g_weight, g_depth, g_trans = (x.astype(jnp.float32) for x in cotangents)
    pixel = jnp.stack([transmittance.astype(jnp.float32), last.astype(jnp.float32), g_color[..., 0],
                       g_color[..., 1], g_color[..., 2], g_weight, g_depth, g_trans], -1)
    kernel = functools.partial(_backward_kernel, grid_x=grid_x, num_tiles=num_tiles, chunk=chunk,
                               cuda_gradient=cuda_gradient)
    per_entry = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(listed.shape, jnp.float32),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3,
            grid=(cams, num_tiles),
            in_specs=[pl.BlockSpec(memory_space=pl.ANY),
                      pl.BlockSpec((None, None, fwd.PIXELS, len(IN_COLUMNS)), lambda c, t, *_: (c, t, 0, 0)),
                      pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=pl.BlockSpec(memory_space=pl.ANY),
            scratch_shapes=[pltpu.VMEM((fwd.NUM_FEATURES, chunk), jnp.float32),
                            pltpu.VMEM((fwd.NUM_FEATURES, chunk), jnp.float32), pltpu.SemaphoreType.DMA((2,))]),
        # Operand 5 (counting the three scalar-prefetch operands): the zeros become the per-entry gradients.
        input_output_aliases={5: 0},
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=fwd.interpret_arg(interpret),
        name="splat_rasterize_backward_tpu",
    )(tile_start.reshape(-1).astype(jnp.int32), tile_end.reshape(-1).astype(jnp.int32),
      jnp.max(last, axis=-1).reshape(-1).astype(jnp.int32), listed, pixel, jnp.zeros(listed.shape, jnp.float32))
    used = jnp.arange(capacity) < jnp.max(tile_end, axis=-1, keepdims=True)  # (C, capacity)
    rows = jnp.where(used[:, :, None], jnp.swapaxes(per_entry[:, :, :capacity], 1, 2), 0.0)
    grads = jax.vmap(lambda r, i: jax.ops.segment_sum(r, i, num_segments=num))(rows, jnp.where(used, ids, 0))
    return grads.astype(feats.dtype)
