"""Pallas (Triton backend) kernels for the splatter's rasterization stage, forward and backward.

One program per 16x16 tile (a 256-pixel vector per program); the tile's depth-sorted list
`ids[tile_start[t]:tile_end[t]]` is walked in chunks of `CHUNK` entries, gathering the per-Gaussian features
(10, N) in the kernel. Inside a chunk the sequential compositing rule (skip alpha < 1/255, stop before blending
when T (1 - alpha) < 1e-4) is evaluated in closed form over a (256, CHUNK) block with cumulative sums of
log(1 - alpha) (Triton has a cumsum scan but no cumprod). A tile stops as soon as all its pixels are done.

The backward walks the same chunks back to front, rebuilding T before each entry from the saved final T and
carrying the suffix sum of weight x cotangent (no per-pixel list is stored). Per-Gaussian gradients are summed
over tiles with atomic adds into (10, N) (default), or, with ACCUMULATE = "segment", written as one row per list
entry (10, capacity) and summed deterministically with a segment sum in XLA.

Contracts are those of `geolrm_jax.render.rasterize` (`forward_xla` / `backward_xla`); `rasterize` below is the
custom_vjp entry point with implementation "pallas" (GPU) or "pallas_interpret" (any backend, for tests), and
`rasterize_reference` is the pure-jnp path with the same contract.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from geolrm_jax.render.projection import TILE_SIZE, tiles_grid
from geolrm_jax.render.rasterize import (
    ALPHA_MAX,
    ALPHA_MIN,
    NUM_FEATURES,
    PIXELS,
    T_MIN,
    TileImage,
    forward_xla,
    rasterize_tiles,
)

# List entries per step and warps per program (one 16x16 tile); read at trace time, so a benchmark can sweep them.
# H100, 512k Gaussians, 8 x 448² (docs/splatter.md): 16 / 4 / 8 measured faster than 32 / 8 / 8 (fwd 14.6 vs
# 16.1 ms, fwd+bwd 32.5 vs 35.2 ms); 4 backward warps or chunks of 64 were much slower.
CHUNK = 16
NUM_WARPS = 4
BACKWARD_NUM_WARPS = 8
# How the backward sums the per-(tile, Gaussian) gradient rows: "atomic" adds them into (10, N) with atomics
# (memory O(N), order-nondeterministic in the last bits, like the CUDA rasterizer); "segment" writes one row
# per list entry (10, capacity) and sums with a segment sum in XLA (deterministic, memory O(capacity)).
ACCUMULATE = "atomic"


def _pixel_coords(t, grid_x: int, height: int, width: int):
    p = jax.lax.broadcasted_iota(jnp.int32, (PIXELS,), 0)
    px = (t % grid_x) * TILE_SIZE + p % TILE_SIZE
    py = (t // grid_x) * TILE_SIZE + p // TILE_SIZE
    inside = (px < width) & (py < height)
    return px.astype(jnp.float32), py.astype(jnp.float32), inside


def _load_chunk(ids_ref, feats_ref, start, end, k, chunk: int, with_ids: bool = False):
    """Positions (chunk,), in-list mask, and the 10 feature vectors (chunk,) of list entries start + k*chunk..."""
    pos = start + k * chunk + jax.lax.broadcasted_iota(jnp.int32, (chunk,), 0)
    in_list = pos < end
    gid = plgpu.load(ids_ref.at[pos], mask=in_list, other=0)
    feats = [plgpu.load(feats_ref.at[j, gid], mask=in_list, other=0.0) for j in range(NUM_FEATURES)]
    return (pos, in_list, feats, gid) if with_ids else (pos, in_list, feats)


def _alpha(feats, px, py):
    mx, my, a, b, c, o = feats[:6]
    dx = mx[None, :] - px[:, None]
    dy = my[None, :] - py[:, None]
    power = -0.5 * (a[None, :] * dx * dx + c[None, :] * dy * dy) - b[None, :] * dx * dy
    raw = o[None, :] * jnp.exp(power)
    return dx, dy, power, raw, jnp.minimum(raw, ALPHA_MAX)


def _forward_kernel(start_ref, end_ref, ids_ref, feats_ref, c0_ref, c1_ref, c2_ref, w_ref, d_ref, t_ref,
                    last_ref, count_ref, stop_ref, *, grid_x: int, height: int, width: int, chunk: int):
    t = pl.program_id(0)
    start, end = start_ref[t], end_ref[t]
    px, py, inside = _pixel_coords(t, grid_x, height, width)
    zeros = jnp.zeros((PIXELS,), jnp.float32)
    izeros = jnp.zeros((PIXELS,), jnp.int32)
    num_chunks = (end - start + chunk - 1) // chunk
    init = (jnp.int32(0), zeros + 1.0, zeros, zeros, zeros, zeros, zeros, izeros, izeros, izeros,
            jnp.where(inside, 0, 1))

    def cond(s):
        return (s[0] < num_chunks) & (jnp.min(s[-1]) == 0)

    def body(s):
        k, trans, c0, c1, c2, wsum, dsum, last, count, stopped, done = s
        pos, in_list, f = _load_chunk(ids_ref, feats_ref, start, end, k, chunk)
        _, _, power, _, alpha = _alpha(f, px, py)
        m = in_list[None, :] & (power <= 0) & (alpha >= ALPHA_MIN) & (done[:, None] == 0)
        log_1m = jnp.where(m, jnp.log(1.0 - alpha), 0.0)
        t_incl = trans[:, None] * jnp.exp(jnp.cumsum(log_1m, axis=1))
        fail = m & (t_incl < T_MIN)
        keep = m & (jnp.cumsum(fail.astype(jnp.float32), axis=1) == 0)
        log_keep = jnp.where(keep, log_1m, 0.0)
        w = jnp.where(keep, alpha, 0.0) * trans[:, None] * jnp.exp(jnp.cumsum(log_keep, axis=1) - log_keep)
        stop = jnp.max(fail.astype(jnp.int32), axis=1)
        return (k + 1, trans * jnp.exp(jnp.sum(log_keep, axis=1)),
                c0 + jnp.sum(w * f[6][None, :], axis=1), c1 + jnp.sum(w * f[7][None, :], axis=1),
                c2 + jnp.sum(w * f[8][None, :], axis=1), wsum + jnp.sum(w, axis=1),
                dsum + jnp.sum(w * f[9][None, :], axis=1),
                jnp.maximum(last, jnp.max(jnp.where(keep, pos[None, :] + 1, 0), axis=1)),
                count + jnp.sum(keep.astype(jnp.int32), axis=1), jnp.maximum(stopped, stop),
                jnp.maximum(done, stop))

    _, trans, c0, c1, c2, wsum, dsum, last, count, stopped, _ = jax.lax.while_loop(cond, body, init)
    for ref, val in ((c0_ref, c0), (c1_ref, c1), (c2_ref, c2), (w_ref, wsum), (d_ref, dsum), (t_ref, trans),
                     (last_ref, last), (count_ref, count), (stop_ref, stopped)):
        ref[...] = val


def _tile_spec():
    return pl.BlockSpec((None, PIXELS), lambda t: (t, 0))


def forward_pallas(feats, ids, tile_start, tile_end, height: int, width: int, *, interpret: bool = False,
                   chunk: int | None = None) -> TileImage:
    """Pallas forward over all tiles of one camera; same contract as `forward_xla` (chunk None = CHUNK)."""
    chunk = chunk or CHUNK
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    f32 = jax.ShapeDtypeStruct((num_tiles, PIXELS), jnp.float32)
    i32 = jax.ShapeDtypeStruct((num_tiles, PIXELS), jnp.int32)
    kernel = functools.partial(_forward_kernel, grid_x=grid_x, height=height, width=width, chunk=chunk)
    outs = pl.pallas_call(
        kernel,
        grid=(num_tiles,),
        out_shape=[f32] * 6 + [i32] * 3,
        out_specs=[_tile_spec()] * 9,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="splat_rasterize_forward",
    )(tile_start, tile_end, ids, feats.astype(jnp.float32).T)
    c0, c1, c2, wsum, dsum, trans, last, count, stopped = outs
    return TileImage(color=jnp.stack([c0, c1, c2], -1), weight=wsum, depth=dsum, transmittance=trans,
                     last=last, count=count, stopped=stopped.astype(bool))


def _backward_kernel(start_ref, end_ref, ids_ref, feats_ref, trans_ref, last_ref, gc0_ref, gc1_ref, gc2_ref,
                     gw_ref, gd_ref, gt_ref, zeros_ref, out_ref, *, grid_x: int, height: int, width: int, chunk: int,
                     cuda_gradient: bool, atomic: bool, num: int):
    t = pl.program_id(0)
    start, end = start_ref[t], end_ref[t]
    px, py, _ = _pixel_coords(t, grid_x, height, width)
    trans, last = trans_ref[...], last_ref[...]
    g_c = (gc0_ref[...], gc1_ref[...], gc2_ref[...])
    g_w, g_d = gw_ref[...], gd_ref[...]
    num_chunks = (jnp.maximum(jnp.max(last) - start, 0) + chunk - 1) // chunk

    def body(i, s):
        t_after, suffix = s
        k = num_chunks - 1 - i
        pos, in_list, f, gid = _load_chunk(ids_ref, feats_ref, start, end, k, chunk, with_ids=True)
        dx, dy, power, raw, alpha = _alpha(f, px, py)
        keep = in_list[None, :] & (pos[None, :] < last[:, None]) & (power <= 0) & (alpha >= ALPHA_MIN)
        one_minus = jnp.where(keep, 1.0 - alpha, 1.0)
        log_keep = jnp.log(one_minus)
        total = jnp.sum(log_keep, axis=1)
        # T before entry i = T after the chunk / prod_{j >= i} (1 - alpha_j).
        t_before = t_after[:, None] * jnp.exp(jnp.cumsum(log_keep, axis=1) - log_keep - total[:, None])
        w = jnp.where(keep, alpha, 0.0) * t_before
        fval = (g_c[0][:, None] * f[6][None, :] + g_c[1][:, None] * f[7][None, :]
                + g_c[2][:, None] * f[8][None, :] + g_w[:, None] + g_d[:, None] * f[9][None, :])
        wf = w * fval
        later = suffix[:, None] + jnp.sum(wf, axis=1)[:, None] - jnp.cumsum(wf, axis=1)
        d_alpha = jnp.where(keep, t_before * fval - later / one_minus, 0.0)
        d_raw = d_alpha if cuda_gradient else jnp.where(raw < ALPHA_MAX, d_alpha, 0.0)
        d_power = d_raw * raw
        a, b, c = f[2][None, :], f[3][None, :], f[4][None, :]
        grads = (
            jnp.sum(-d_power * (a * dx + b * dy), axis=0),
            jnp.sum(-d_power * (c * dy + b * dx), axis=0),
            jnp.sum(-0.5 * d_power * dx * dx, axis=0),
            jnp.sum(-d_power * dx * dy, axis=0),
            jnp.sum(-0.5 * d_power * dy * dy, axis=0),
            jnp.sum(d_raw * jnp.exp(power), axis=0),
            jnp.sum(w * g_c[0][:, None], axis=0),
            jnp.sum(w * g_c[1][:, None], axis=0),
            jnp.sum(w * g_c[2][:, None], axis=0),
            jnp.sum(w * g_d[:, None], axis=0),
        )
        # Lanes past the list add their (zero) rows to distinct padding columns [num, num + chunk), so no mask
        # is needed (interpret mode has no masked atomics) and indices within one add are unique.
        target = jnp.where(in_list, gid, num + jax.lax.broadcasted_iota(jnp.int32, (chunk,), 0))
        for j, g in enumerate(grads):
            if atomic:
                plgpu.atomic_add(out_ref, (j, target), g)
            else:
                plgpu.store(out_ref.at[j, pos], g, mask=in_list)
        return t_after * jnp.exp(-total), suffix + jnp.sum(wf, axis=1)

    del zeros_ref  # aliased to out_ref: entries past a tile's last blended one keep their 0
    jax.lax.fori_loop(0, num_chunks, body, (trans, trans * gt_ref[...]))


def backward_pallas(feats, ids, tile_start, tile_end, out: TileImage, cot: TileImage, height: int, width: int,
                    cuda_gradient: bool, *, interpret: bool = False, chunk: int | None = None,
                    accumulate: str | None = None):
    """Pallas back-to-front backward; same contract as `backward_xla`: d loss / d feats (N, 10).

    accumulate: "atomic" or "segment" (see `ACCUMULATE`, the default); chunk None = CHUNK.
    """
    chunk = chunk or CHUNK
    accumulate = accumulate or ACCUMULATE
    if accumulate not in ("atomic", "segment"):
        raise ValueError(f"accumulate must be 'atomic' or 'segment', got {accumulate!r}")
    atomic = accumulate == "atomic"
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    capacity, num = ids.shape[0], feats.shape[0]
    rows = num + chunk if atomic else capacity
    kernel = functools.partial(_backward_kernel, grid_x=grid_x, height=height, width=width, chunk=chunk,
                               cuda_gradient=cuda_gradient, atomic=atomic, num=num)
    f32 = lambda x: x.astype(jnp.float32)
    result = pl.pallas_call(
        kernel,
        grid=(num_tiles,),
        in_specs=[pl.no_block_spec] * 4 + [_tile_spec()] * 8 + [pl.no_block_spec],
        out_shape=jax.ShapeDtypeStruct((NUM_FEATURES, rows), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=BACKWARD_NUM_WARPS, num_stages=1),
        interpret=interpret,
        # Zero-initialized output: entries past a tile's last blended one are never written.
        input_output_aliases={12: 0},
        name="splat_rasterize_backward",
    )(tile_start, tile_end, ids, f32(feats).T, f32(out.transmittance), out.last,
      *(f32(cot.color[..., j]) for j in range(3)), f32(cot.weight), f32(cot.depth), f32(cot.transmittance),
      jnp.zeros((NUM_FEATURES, rows), jnp.float32))
    if atomic:
        return result[:, :num].T.astype(feats.dtype)
    used = jnp.arange(capacity) < jnp.max(tile_end)
    per_entry = jnp.where(used[None, :], result, 0.0).T
    grads = jax.ops.segment_sum(per_entry, jnp.where(used, ids, 0), num_segments=num)
    return grads.astype(feats.dtype)


def rasterize(feats, ids, tile_start, tile_end, height: int, width: int, *, cuda_gradient: bool = False,
              interpret: bool = False) -> TileImage:
    """custom_vjp rasterization of one camera with the Pallas kernels (see module doc)."""
    return rasterize_tiles(feats, ids, tile_start, tile_end, height, width, cuda_gradient,
                           "pallas_interpret" if interpret else "pallas")


def rasterize_reference(feats, ids, tile_start, tile_end, height: int, width: int) -> TileImage:
    """Pure-jnp forward with the same contract (the XLA path of geolrm_jax.render.rasterize)."""
    return forward_xla(feats, ids, tile_start, tile_end, height, width)
