"""TPU (Pallas Mosaic) forward of the splatter's rasterizer (contract of ``geolrm_kernels.rasterize``).

One program per (camera, 16x16 tile); a tile's depth-sorted list ``ids[tile_start[t]:tile_end[t]]`` is walked
in chunks of ``chunk`` entries. The per-entry features are gathered once by XLA into list order, transposed to
(10, capacity) so that a chunk is one contiguous DMA of (10, chunk) from HBM; chunks are aligned to ``chunk``
(the DMA offset is a multiple of 128 lanes) and entries of neighbouring tiles in the first and last chunk are
masked. The tile ranges are scalar-prefetched into SMEM.

Blocks are (256 pixels on sublanes, chunk entries on lanes). The sequential compositing rule (skip alpha <
1/255, stop before blending when T (1 - alpha) < 1e-4) is evaluated per chunk in closed form with a prefix sum
of log(1 - alpha) along the lanes, done on the MXU as a product with the (chunk, chunk) upper-triangular ones
matrix (Mosaic has no scan). There is no early exit for saturated tiles (the loop bound is a scalar from SMEM;
the per-pixel "done" state is a vector): a saturated tile walks its whole list with its pixels masked.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.rasterize.reference import ALPHA_MAX, ALPHA_MIN, NUM_FEATURES, PIXELS, T_MIN, TILE_SIZE, tiles_grid
from geolrm_kernels.tpu.config import RasterizeTpuConfig
from geolrm_kernels.tpu.interpret import interpret_arg
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

HIGHEST = lax.Precision.HIGHEST
# Columns of the packed per-pixel forward output (num_cameras, num_tiles, 256, OUT_COLUMNS).
OUT_COLUMNS = ("c0", "c1", "c2", "weight", "depth", "transmittance", "last", "count", "stopped")


def list_features(feats, ids, chunk: int):
    """(C, N, 10) features and (C, capacity) list ids -> (C, 10, capacity padded to chunks) in list order."""
    capacity = ids.shape[1]
    padded = -(-capacity // chunk) * chunk
    gathered = jax.vmap(lambda f, i: jnp.take(f, i, axis=0))(feats.astype(jnp.float32), ids)
    return jnp.pad(jnp.swapaxes(gathered, 1, 2), ((0, 0), (0, 0), (0, padded - capacity)))


def pixel_coords(tile, grid_x: int):
    """(px, py), each (256, 1) fp32, of a tile's pixels (row-major in the tile). Kernel integer division is
    lax.div / lax.rem (non-negative operands): jnp's // and % lower through sign, which Mosaic lowers only
    for a known TPU generation."""
    p = lax.broadcasted_iota(jnp.int32, (PIXELS, 1), 0)
    px = lax.rem(tile, grid_x) * TILE_SIZE + (p & (TILE_SIZE - 1))
    py = lax.div(tile, grid_x) * TILE_SIZE + (p >> 4)
    return px.astype(jnp.float32), py.astype(jnp.float32)


def upper_ones(chunk: int):
    """U[i, j] = 1 where i <= j: X @ U is the inclusive prefix sum of X along its lanes."""
    i = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    j = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    return jnp.where(i <= j, 1.0, 0.0)


def prefix_sum(x, ones):
    return jnp.dot(x, ones, precision=HIGHEST, preferred_element_type=jnp.float32)


def chunk_entries(start, end, i, chunk: int):
    """(position of each lane's entry (1, chunk) int32, in-list mask, DMA offset) of chunk i of a tile."""
    offset = pl.multiple_of((lax.div(start, chunk) + i) * chunk, chunk)
    pos = offset + lax.broadcasted_iota(jnp.int32, (1, chunk), 1)
    return pos, (pos >= start) & (pos < end), offset


def num_chunks(start, end, chunk: int):
    return jnp.where(end > start, lax.div(end - lax.div(start, chunk) * chunk + chunk - 1, chunk), 0)


def alpha_terms(buf, px, py):
    """dx, dy, power, gauss, raw = o gauss, alpha = min(raw, 0.99), each (256, chunk), and the feature rows."""
    f = [buf[j:j + 1, :] for j in range(NUM_FEATURES)]
    dx, dy = f[0] - px, f[1] - py
    power = -0.5 * (f[2] * dx * dx + f[4] * dy * dy) - f[3] * dx * dy
    gauss = jnp.exp(power)
    raw = f[5] * gauss
    return dx, dy, power, gauss, raw, jnp.minimum(raw, ALPHA_MAX), f


def _forward_kernel(start_ref, end_ref, feats_hbm, out_ref, buf, sem, *, grid_x: int, height: int, width: int,
                    num_tiles: int, chunk: int):
    cam, tile = pl.program_id(0), pl.program_id(1)
    start, end = start_ref[cam * num_tiles + tile], end_ref[cam * num_tiles + tile]
    px, py = pixel_coords(tile, grid_x)
    ones = upper_ones(chunk)
    zero = jnp.zeros((PIXELS, 1), jnp.float32)
    outside = jnp.where((px < width) & (py < height), 0.0, 1.0)

    def body(i, state):
        trans, c0, c1, c2, wsum, dsum, last, count, stopped, done = state
        pos, in_list, offset = chunk_entries(start, end, i, chunk)
        copy = pltpu.make_async_copy(feats_hbm.at[cam, :, pl.ds(offset, chunk)], buf, sem)
        copy.start()
        copy.wait()
        _, _, power, _, _, alpha, f = alpha_terms(buf, px, py)
        m = in_list & (power <= 0.0) & (alpha >= ALPHA_MIN) & (done == 0.0)
        log_1m = jnp.where(m, jnp.log(1.0 - alpha), 0.0)
        cum = prefix_sum(log_1m, ones)
        # T after each blended entry only decreases along the chunk, so "no stop before j and none at j" is
        # T_incl(j) >= 1e-4; for those entries the prefix sum equals that of the kept entries.
        keep = m & (trans * jnp.exp(cum) >= T_MIN)
        w = jnp.where(keep, alpha, 0.0) * trans * jnp.exp(cum - log_1m)
        stop = jnp.max(jnp.where(m & ~keep, 1.0, 0.0), axis=1, keepdims=True)
        lane_sum = lambda x: jnp.sum(x, axis=1, keepdims=True)
        return (trans * jnp.exp(lane_sum(jnp.where(keep, log_1m, 0.0))), c0 + lane_sum(w * f[6]),
                c1 + lane_sum(w * f[7]), c2 + lane_sum(w * f[8]), wsum + lane_sum(w), dsum + lane_sum(w * f[9]),
                jnp.maximum(last, jnp.max(jnp.where(keep, (pos + 1).astype(jnp.float32), 0.0), axis=1,
                                          keepdims=True)),
                count + lane_sum(jnp.where(keep, 1.0, 0.0)), jnp.maximum(stopped, stop), jnp.maximum(done, stop))

    init = (zero + 1.0,) + (zero,) * 8 + (outside,)
    state = lax.fori_loop(0, num_chunks(start, end, chunk), body, init)
    trans, c0, c1, c2, wsum, dsum, last, count, stopped, _ = state
    column = lax.broadcasted_iota(jnp.int32, out_ref.shape, 1)
    packed = jnp.zeros(out_ref.shape, jnp.float32)
    for j, x in enumerate((c0, c1, c2, wsum, dsum, trans, last, count, stopped)):
        packed = jnp.where(column == j, x, packed)
    out_ref[...] = packed


def forward(feats, ids, tile_start, tile_end, height: int, width: int, *, interpret=False,
            config: RasterizeTpuConfig | None = None):
    """Cameras batched on the leading axis: feats (C, N, 10), ids (C, capacity), tile_start / tile_end
    (C, num_tiles). Returns (color (C, T, 256, 3), weight, depth, transmittance (C, T, 256) in feats.dtype,
    last, count (C, T, 256) int32, stopped (C, T, 256) bool), the fields of ``TileImage``."""
    config = config or RasterizeTpuConfig()
    cams = feats.shape[0]
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    chunk = config.chunk
    kernel = functools.partial(_forward_kernel, grid_x=grid_x, height=height, width=width, num_tiles=num_tiles,
                               chunk=chunk)
    packed = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((cams, num_tiles, PIXELS, 16), jnp.float32),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(cams, num_tiles),
            in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=pl.BlockSpec((None, None, PIXELS, 16), lambda c, t, s, e: (c, t, 0, 0)),
            scratch_shapes=[pltpu.VMEM((NUM_FEATURES, chunk), jnp.float32), pltpu.SemaphoreType.DMA]),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret_arg(interpret),
        name="splat_rasterize_forward_tpu",
    )(tile_start.reshape(-1).astype(jnp.int32), tile_end.reshape(-1).astype(jnp.int32),
      list_features(feats, ids, chunk))
    cast = lambda x: x.astype(feats.dtype)
    return (cast(packed[..., 0:3]), cast(packed[..., 3]), cast(packed[..., 4]), cast(packed[..., 5]),
            packed[..., 6].astype(jnp.int32), packed[..., 7].astype(jnp.int32), packed[..., 8] > 0.5)
