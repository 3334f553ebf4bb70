"""Helpers shared by the rasterizer's Pallas (Triton) forward and backward kernels: one program per 16x16 tile (a
256-pixel vector per program) walks the tile's depth-sorted list ``ids[tile_start[t]:tile_end[t]]`` in chunks of
entries, gathering the per-Gaussian features (10, N) in the kernel."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from geolrm_kernels.rasterize.reference import ALPHA_MAX, NUM_FEATURES, PIXELS, TILE_SIZE
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def pixel_coords(t, grid_x: int, height: int, width: int):
    p = jax.lax.broadcasted_iota(jnp.int32, (PIXELS,), 0)
    px = (t % grid_x) * TILE_SIZE + p % TILE_SIZE
    py = (t // grid_x) * TILE_SIZE + p // TILE_SIZE
    inside = (px < width) & (py < height)
    return px.astype(jnp.float32), py.astype(jnp.float32), inside


def load_chunk(ids_ref, feats_ref, start, end, k, chunk: int):
    """Positions (chunk,), in-list mask, the 10 feature vectors (chunk,) and the ids of entries start + k*chunk..."""
    pos = start + k * chunk + jax.lax.broadcasted_iota(jnp.int32, (chunk,), 0)
    in_list = (pos < end) & (pos >= start)
    gid = plgpu.load(ids_ref.at[pos], mask=in_list, other=0)
    feats = tuple(plgpu.load(feats_ref.at[j, gid], mask=in_list, other=0.0) for j in range(NUM_FEATURES))
    return pos, in_list, feats, gid


def broadcasts(gaxis: int):
    """(per-pixel, per-Gaussian) vector -> 2D block broadcasts, for blocks with the Gaussians on axis gaxis."""
    lanes, rows = (lambda x: x[None, :]), (lambda x: x[:, None])
    return (rows, lanes) if gaxis == 1 else (lanes, rows)


def gaussian_alpha(feats, px, py, gaxis: int = 1):
    pix, gau = broadcasts(gaxis)
    mx, my, a, b, c, o = (gau(x) for x in feats[:6])
    dx, dy = mx - pix(px), my - pix(py)
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    gauss = jnp.exp(power)
    raw = o * gauss
    return dx, dy, power, gauss, raw, jnp.minimum(raw, ALPHA_MAX)


def tile_spec():
    """Block of one tile's 256 pixels of a (num_tiles, 256) array."""
    return pl.BlockSpec((None, PIXELS), lambda t: (t, 0))
