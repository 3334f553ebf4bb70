"""Pallas (Triton backend) forward kernel of the rasterizer (contract: ``reference.forward_xla``).

One program per 16x16 tile walks the tile's depth-sorted list in chunks of ``config.chunk`` entries (the next
chunk's loads are issued before the current chunk is computed). Inside a chunk the sequential compositing rule
(skip alpha < 1/255, stop before blending when T (1 - alpha) < 1e-4) is evaluated in closed form with a
cumulative sum of log(1 - alpha) (Triton has a cumsum scan but no cumprod). A tile stops as soon as all its pixels
are done. Blocks are (chunk, 256) (Triton spreads a block's last axis over the lanes of a warp), so the scan and
the sums over the chunk (colour, weight, depth, T, counts) run within each thread.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.rasterize import triton_common as tc
from geolrm_kernels.rasterize.config import DEFAULT_CONFIG, RasterizeConfig
from geolrm_kernels.rasterize.reference import ALPHA_MIN, PIXELS, T_MIN, TileImage, tiles_grid
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _forward_kernel(start_ref, end_ref, ids_ref, feats_ref, c0_ref, c1_ref, c2_ref, w_ref, d_ref, t_ref,
                    last_ref, count_ref, stop_ref, *, grid_x: int, height: int, width: int, chunk: int):
    t = pl.program_id(0)
    start, end = start_ref[t], end_ref[t]
    px, py, inside = tc.pixel_coords(t, grid_x, height, width)
    gaxis = 0  # (chunk, 256) blocks: everything along the chunk stays within a thread
    pix, gau = tc.broadcasts(gaxis)
    zeros = jnp.zeros((PIXELS,), jnp.float32)
    izeros = jnp.zeros((PIXELS,), jnp.int32)
    num_chunks = (end - start + chunk - 1) // chunk
    load = functools.partial(tc.load_chunk, ids_ref, feats_ref, start, end, chunk=chunk)
    sums = (zeros,) * 5  # colour (3), weight, depth
    init = (jnp.int32(0), load(0)[:3], zeros + 1.0, sums, izeros, izeros, izeros,
            jnp.where(inside, 0, 1))

    def cond(s):
        return (s[0] < num_chunks) & (jnp.min(s[-1]) == 0)

    def body(s):
        k, ahead, trans, sums, last, count, stopped, done = s
        pos, in_list, f = ahead
        ahead = load(k + 1)[:3]  # the next chunk's loads are issued before this chunk is computed
        _, _, power, _, _, alpha = tc.gaussian_alpha(f, px, py, gaxis)
        m = gau(in_list) & (power <= 0) & (alpha >= ALPHA_MIN) & (pix(done) == 0)
        log_1m = jnp.where(m, jnp.log(1.0 - alpha), 0.0)
        cum = jnp.cumsum(log_1m, axis=gaxis)
        t_incl = pix(trans) * jnp.exp(cum)
        # T after each blended entry only decreases along the chunk, so "no stop before j and none at j" is
        # simply T_incl(j) >= 1e-4; and for those entries the cumulative sum equals that of the kept entries.
        keep = m & (t_incl >= T_MIN)
        w = jnp.where(keep, alpha, 0.0) * pix(trans) * jnp.exp(cum - log_1m)
        stop = jnp.max((m & ~keep).astype(jnp.int32), axis=gaxis)
        sums = tuple(acc + jnp.sum(w if v is None else w * gau(v), axis=gaxis)
                     for acc, v in zip(sums, (f[6], f[7], f[8], None, f[9]), strict=True))
        return (k + 1, ahead, trans * jnp.exp(jnp.sum(jnp.where(keep, log_1m, 0.0), axis=gaxis)), sums,
                jnp.maximum(last, jnp.max(jnp.where(keep, gau(pos) + 1, 0), axis=gaxis)),
                count + jnp.sum(keep, axis=gaxis, dtype=jnp.int32), jnp.maximum(stopped, stop),
                jnp.maximum(done, stop))

    _, _, trans, sums, last, count, stopped, _ = jax.lax.while_loop(cond, body, init)
    for ref, val in ((c0_ref, sums[0]), (c1_ref, sums[1]), (c2_ref, sums[2]), (w_ref, sums[3]), (d_ref, sums[4]),
                     (t_ref, trans), (last_ref, last), (count_ref, count), (stop_ref, stopped)):
        ref[...] = val


def forward_pallas(feats, ids, tile_start, tile_end, height: int, width: int, *, interpret: bool = False,
                   config: RasterizeConfig = DEFAULT_CONFIG) -> TileImage:
    """Pallas forward over all tiles of one camera; same contract as `reference.forward_xla`."""
    chunk = config.chunk
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    f32 = jax.ShapeDtypeStruct((num_tiles, PIXELS), jnp.float32)
    i32 = jax.ShapeDtypeStruct((num_tiles, PIXELS), jnp.int32)
    kernel = functools.partial(_forward_kernel, grid_x=grid_x, height=height, width=width, chunk=chunk)
    outs = pl.pallas_call(
        kernel,
        grid=(num_tiles,),
        out_shape=[f32] * 6 + [i32] * 3,
        out_specs=[tc.tile_spec()] * 9,
        compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=1),
        interpret=interpret,
        name="splat_rasterize_forward",
    )(tile_start, tile_end, ids, feats.astype(jnp.float32).T)
    c0, c1, c2, wsum, dsum, trans, last, count, stopped = outs
    return TileImage(color=jnp.stack([c0, c1, c2], -1), weight=wsum, depth=dsum, transmittance=trans,
                     last=last, count=count, stopped=stopped.astype(bool))
