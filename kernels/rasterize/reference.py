"""Pure-jnp (XLA) reference of the splatter's rasterization stage: alpha compositing of depth-sorted per-tile
lists, forward and backward, the 16x16 tile layout, and a dense reference independent of the tile lists.

Per pixel (x, y) (integer centre) of a tile, the tile's Gaussians are visited front to back (CUDA forward.cu):
  power = -1/2 (A dx^2 + C dy^2) - B dx dy with d = mean2d - (x, y); skip if power > 0;
  alpha = min(0.99, o exp(power)); skip if alpha < 1/255;
  if T (1 - alpha) < 1e-4: stop, this Gaussian is NOT blended;
  else C += c alpha T, W += alpha T, D += z alpha T, T *= 1 - alpha.
Outputs per pixel: C (3), W (= alpha output), D (= unnormalized depth), T_final, and for the backward / tests
`last` (list position + 1 of the last blended Gaussian), `count` (number blended) and `stopped`.

Work is done in chunks of `CHUNK` list entries: within a chunk the sequential rule is evaluated in closed form
with a cumulative product (entries after the first stop are dropped), which is exactly the per-Gaussian loop.

The backward walks each tile back to front, rebuilding T by division from the saved T_final (never from 1 - W,
which loses precision at saturated pixels) and the suffix sums from the cotangents; nothing per
pixel-and-Gaussian is stored. Both are differentiable in forward mode (see ``geolrm_kernels.derivatives``).

Per-Gaussian features are packed as (N, 10) = [mx, my, A, B, C, opacity, r, g, b, z] (see `pack_features`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

TILE_SIZE = 16
# Explicit float32 matmuls: XLA on Ampere/Hopper GPUs otherwise runs float32 dots in TF32 (10-bit mantissa),
# which moves colours by ~1e-3 and flips blending decisions.
HIGHEST = jax.lax.Precision.HIGHEST
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
CHUNK = 32
NUM_FEATURES = 10
PIXELS = TILE_SIZE * TILE_SIZE


def tiles_grid(height: int, width: int) -> tuple[int, int]:
    """Number of 16 x 16 tiles along x and y (static ints)."""
    return -(-width // TILE_SIZE), -(-height // TILE_SIZE)


def tile_rect(means2d, radii, grid_x: int, grid_y: int) -> jnp.ndarray:
    """CUDA getRect: half-open tile rectangle (x0, y0, x1, y1), (N, 4) int32, clamped to the grid."""
    r = radii.astype(means2d.dtype)
    mx, my = means2d[:, 0], means2d[:, 1]

    def bound(v, hi):
        return jnp.clip(jnp.floor(v / TILE_SIZE), 0, hi).astype(jnp.int32)

    return jnp.stack([
        bound(mx - r, grid_x), bound(my - r, grid_y),
        bound(mx + r + TILE_SIZE - 1, grid_x), bound(my + r + TILE_SIZE - 1, grid_y),
    ], -1)


class TileImage(NamedTuple):
    """Per-tile, per-pixel rasterizer outputs; leading dims (num_tiles, 256), pixels row-major in a tile."""

    color: jnp.ndarray  # (T, 256, 3) sum of c alpha T
    weight: jnp.ndarray  # (T, 256) sum of alpha T
    depth: jnp.ndarray  # (T, 256) sum of z alpha T
    transmittance: jnp.ndarray  # (T, 256) final T
    last: jnp.ndarray  # (T, 256) int32 list position + 1 of the last blended entry (0 if none)
    count: jnp.ndarray  # (T, 256) int32 number of Gaussians blended
    stopped: jnp.ndarray  # (T, 256) bool, the T < 1e-4 stop fired


def pack_features(means2d, conics, opacities, rgbs, depths) -> jnp.ndarray:
    """(N, 10) float features [mx, my, A, B, C, o, r, g, b, z] read by the rasterizer."""
    return jnp.concatenate([means2d, conics, opacities[:, None], rgbs, depths[:, None]], -1)


def tile_pixel_coords(height: int, width: int, dtype=jnp.float32):
    """Pixel coordinates (px, py), each (num_tiles, 256), and the in-image mask, for the 16x16 tile layout."""
    grid_x, grid_y = tiles_grid(height, width)
    t = jnp.arange(grid_x * grid_y)
    p = jnp.arange(PIXELS)
    px = (t % grid_x)[:, None] * TILE_SIZE + p[None, :] % TILE_SIZE
    py = (t // grid_x)[:, None] * TILE_SIZE + p[None, :] // TILE_SIZE
    inside = (px < width) & (py < height)
    return px.astype(dtype), py.astype(dtype), inside


def tiles_to_image(x, height: int, width: int):
    """(num_tiles, 256, ...) -> (height, width, ...)."""
    grid_x, grid_y = tiles_grid(height, width)
    rest = x.shape[2:]
    x = x.reshape(grid_y, grid_x, TILE_SIZE, TILE_SIZE, *rest)
    x = jnp.moveaxis(x, 2, 1).reshape(grid_y * TILE_SIZE, grid_x * TILE_SIZE, *rest)
    return x[:height, :width]


def image_to_tiles(x, height: int, width: int):
    """(height, width, ...) -> (num_tiles, 256, ...), zero padded; inverse of `tiles_to_image`."""
    grid_x, grid_y = tiles_grid(height, width)
    rest = x.shape[2:]
    pad = [(0, grid_y * TILE_SIZE - height), (0, grid_x * TILE_SIZE - width)] + [(0, 0)] * len(rest)
    x = jnp.pad(x, pad).reshape(grid_y, TILE_SIZE, grid_x, TILE_SIZE, *rest)
    return jnp.moveaxis(x, 2, 1).reshape(grid_y * grid_x, PIXELS, *rest)


def _chunk_alpha(f, px, py, cuda_gradient: bool = False):
    """f (T, B, 10) features, px/py (T, 256) -> dx, dy, power, raw = o exp(power), alpha; each (T, 256, B).

    cuda_gradient: alpha's derivative is raw's also where the 0.99 clamp is active (straight through)."""
    dx = f[:, None, :, 0] - px[:, :, None]
    dy = f[:, None, :, 1] - py[:, :, None]
    a, b, c, o = (f[:, None, :, k] for k in (2, 3, 4, 5))
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    raw = o * jnp.exp(power)
    alpha = jnp.minimum(ALPHA_MAX, raw)
    if cuda_gradient:
        alpha = raw + jax.lax.stop_gradient(alpha - raw)
    return dx, dy, power, raw, alpha


def _gather_chunk(feats, ids, tile_start, tile_end, k):
    pos = tile_start[:, None] + k * CHUNK + jnp.arange(CHUNK, dtype=jnp.int32)[None, :]
    in_list = pos < tile_end[:, None]
    gid = ids[jnp.minimum(pos, ids.shape[0] - 1)]
    return pos, in_list, gid, feats[gid]


def forward_xla(feats, ids, tile_start, tile_end, height: int, width: int, cuda_gradient: bool = False) -> TileImage:
    """Pure-JAX forward over all tiles of one camera; shapes as `TileImage`.

    Differentiable in forward mode (its loops have data-dependent trip counts); ``cuda_gradient`` changes only
    its derivatives (the straight-through 0.99 clamp of `backward_xla(cuda_gradient=True)`)."""
    px, py, inside = tile_pixel_coords(height, width, feats.dtype)
    num_tiles = px.shape[0]
    num_chunks = (jnp.max(tile_end - tile_start) + CHUNK - 1) // CHUNK
    zeros = jnp.zeros((num_tiles, PIXELS), feats.dtype)
    izeros = jnp.zeros((num_tiles, PIXELS), jnp.int32)
    init = (jnp.int32(0), TileImage(jnp.zeros((num_tiles, PIXELS, 3), feats.dtype), zeros, zeros,
                                    jnp.ones_like(zeros), izeros, izeros, jnp.zeros_like(inside)), ~inside)

    def cond(state):
        k, _, done = state
        return (k < num_chunks) & ~jnp.all(done)

    def body(state):
        k, acc, done = state
        pos, in_list, _, f = _gather_chunk(feats, ids, tile_start, tile_end, k)
        _, _, power, _, alpha = _chunk_alpha(f, px, py, cuda_gradient)
        m = in_list[:, None, :] & (power <= 0) & (alpha >= ALPHA_MIN) & ~done[:, :, None]
        t_incl = acc.transmittance[:, :, None] * jnp.cumprod(jnp.where(m, 1 - alpha, 1), axis=-1)
        fail = m & (t_incl < T_MIN)
        keep = m & (jnp.cumsum(fail, axis=-1) == 0)
        ka = jnp.where(keep, alpha, 0)
        prod_incl = jnp.cumprod(1 - ka, axis=-1)
        t_excl = acc.transmittance[:, :, None] * jnp.concatenate(
            [jnp.ones_like(prod_incl[..., :1]), prod_incl[..., :-1]], -1)
        w = ka * t_excl
        stop = jnp.any(fail, -1)
        new = TileImage(
            color=acc.color + jnp.einsum("tpb,tbc->tpc", w, f[..., 6:9], precision=HIGHEST),
            weight=acc.weight + w.sum(-1),
            depth=acc.depth + jnp.einsum("tpb,tb->tp", w, f[..., 9], precision=HIGHEST),
            transmittance=acc.transmittance * prod_incl[..., -1],
            last=jnp.maximum(acc.last, jnp.max(jnp.where(keep, pos[:, None, :] + 1, 0), -1)),
            count=acc.count + keep.sum(-1, dtype=jnp.int32),
            stopped=acc.stopped | stop,
        )
        return k + 1, new, done | stop

    return jax.lax.while_loop(cond, body, init)[1]


def backward_xla(feats, ids, tile_start, tile_end, out: TileImage, cot: TileImage, height: int, width: int,
                 cuda_gradient: bool):
    """Pure-JAX back-to-front backward; returns d loss / d feats, (N, 10).

    cot holds the cotangents of color/weight/depth/transmittance; T before each entry is rebuilt by dividing
    the saved T_final by (1 - alpha) from the back, and the suffix sum of (weight x cotangent) is carried.
    """
    px, py, _ = tile_pixel_coords(height, width, feats.dtype)
    last_chunk = (jnp.max(jnp.maximum(out.last - tile_start[:, None], 0)) + CHUNK - 1) // CHUNK
    g_color, g_weight, g_depth = cot.color, cot.weight, cot.depth
    # S = sum over later entries of w_j f_j, plus the T_final term; f_j = g_color.c_j + g_weight + g_depth z_j.
    init = (last_chunk - 1, out.transmittance, out.transmittance * cot.transmittance,
            jnp.zeros_like(feats))

    def cond(state):
        return state[0] >= 0

    def body(state):
        k, t_after, suffix, grads = state
        pos, _, gid, f = _gather_chunk(feats, ids, tile_start, tile_end, k)
        dx, dy, power, raw, alpha = _chunk_alpha(f, px, py)
        keep = (pos[:, None, :] < out.last[:, :, None]) & (power <= 0) & (alpha >= ALPHA_MIN)
        one_minus = 1 - jnp.where(keep, alpha, 0)
        # T before entry i = T after the chunk / prod_{j >= i in chunk} (1 - alpha_j).
        suffix_prod = jnp.flip(jnp.cumprod(jnp.flip(one_minus, -1), -1), -1)
        t_before = t_after[:, :, None] / suffix_prod
        w = jnp.where(keep, alpha, 0) * t_before
        fval = (jnp.einsum("tpc,tbc->tpb", g_color, f[..., 6:9], precision=HIGHEST) + g_weight[:, :, None]
                + g_depth[:, :, None] * f[:, None, :, 9])
        wf = w * fval
        later = suffix[:, :, None] + (jnp.flip(jnp.cumsum(jnp.flip(wf, -1), -1), -1) - wf)
        d_alpha = jnp.where(keep, t_before * fval - later / one_minus, 0)
        d_raw = d_alpha if cuda_gradient else jnp.where(raw < ALPHA_MAX, d_alpha, 0)
        gauss = jnp.exp(power)
        d_power = d_raw * raw
        a, b, c = (f[:, None, :, j] for j in (2, 3, 4))
        g = jnp.stack([
            jnp.sum(-d_power * (a * dx + b * dy), 1),
            jnp.sum(-d_power * (c * dy + b * dx), 1),
            jnp.sum(-0.5 * d_power * dx * dx, 1),
            jnp.sum(-d_power * dx * dy, 1),
            jnp.sum(-0.5 * d_power * dy * dy, 1),
            jnp.sum(d_raw * gauss, 1),
        ], -1)
        g_rgb = jnp.einsum("tpb,tpc->tbc", w, g_color, precision=HIGHEST)
        g_z = jnp.einsum("tpb,tp->tb", w, g_depth, precision=HIGHEST)
        g = jnp.concatenate([g, g_rgb, g_z[..., None]], -1)
        grads = grads.at[gid.reshape(-1)].add(g.reshape(-1, NUM_FEATURES))
        return k - 1, t_before[:, :, 0], suffix + wf.sum(-1), grads

    return jax.lax.while_loop(cond, body, init)[3]


def rasterize_dense_reference(feats, radii, height: int, width: int, *, cuda_gradient: bool = False):
    """Dense jnp reference: every Gaussian against every pixel, tile-masked, sorted by depth; autodiff-able.

    Independent of the tile lists and of the derivative rules; for tests on small images (memory H*W*N).
    Returns (color (H, W, 3), weight (H, W), depth (H, W), transmittance (H, W), count (H, W), stopped (H, W)).
    """
    grid_x, grid_y = tiles_grid(height, width)
    order = jnp.argsort(jax.lax.stop_gradient(feats[:, 9]), stable=True)
    feats, radii = feats[order], radii[order]
    rect = tile_rect(jax.lax.stop_gradient(feats[:, :2]), radii, grid_x, grid_y)
    ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    tx, ty = (xs // TILE_SIZE)[..., None], (ys // TILE_SIZE)[..., None]
    in_rect = ((radii > 0) & (tx >= rect[:, 0]) & (tx < rect[:, 2]) & (ty >= rect[:, 1]) & (ty < rect[:, 3]))
    dx = feats[:, 0] - xs[..., None].astype(feats.dtype)
    dy = feats[:, 1] - ys[..., None].astype(feats.dtype)
    power = -0.5 * (feats[:, 2] * dx * dx + feats[:, 4] * dy * dy) - feats[:, 3] * dx * dy
    raw = feats[:, 5] * jnp.exp(jnp.minimum(power, 0))
    alpha = jnp.minimum(ALPHA_MAX, raw)
    if cuda_gradient:
        alpha = raw + jax.lax.stop_gradient(alpha - raw)
    m = in_rect & (power <= 0) & (alpha >= ALPHA_MIN)
    t_incl = jnp.cumprod(jnp.where(m, 1 - alpha, 1), -1)
    keep = m & (jnp.cumsum(m & (t_incl < T_MIN), -1) == 0)
    ka = jnp.where(keep, alpha, 0)
    prod = jnp.cumprod(1 - ka, -1)
    t_excl = jnp.concatenate([jnp.ones_like(prod[..., :1]), prod[..., :-1]], -1)
    w = ka * t_excl
    return (jnp.matmul(w, feats[:, 6:9], precision=HIGHEST), w.sum(-1), jnp.matmul(w, feats[:, 9], precision=HIGHEST),
            prod[..., -1], keep.sum(-1),
            jnp.any(m & (t_incl < T_MIN), -1))
