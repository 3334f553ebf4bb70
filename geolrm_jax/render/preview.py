"""Fast preview renderer for CPU backends with the splatter's image model (turntables, per-view renders).

`render_preview(gaussians, c2w, K, height, width, background)` -> (C, H, W, 3) float32 RGB in [0, 1]: the image
`splat.render(...).rgb` computes, forward only. Same image model as geolrm_jax/render/*:
  * projection: `projection.project_gaussians`' formulas term by term (near plane 0.2, EWA Jacobian with the 1.3
    clamp, +0.3 dilation, conic, radius ceil(3 sqrt(lambda_max)) with the 0.1 eigenvalue floor, tile rectangle);
  * 16 x 16 tiles; a Gaussian reaches the pixels of the tiles of its rectangle only;
  * per pixel, front to back over Gaussians sorted by (view z, index): power = -(A dx^2 + C dy^2)/2 - B dx dy,
    alpha = min(0.99, o exp(power)); skip if power > 0 or alpha < 1/255; stop, without blending, once
    T (1 - alpha) < 1e-4; rgb = clamp(C + T bg, 0, 1).
Only the bookkeeping differs from `splat`, whose XLA path sorts all tile-Gaussian keys with XLA's comparison sort
and pads every tile to the longest list, which dominates on CPU (tools/bench/turntable.py compares the two):
  1. projection (jit, a group of cameras vmapped), struct-of-arrays, the 3D covariances computed once;
  2. binning on the host (numpy), per camera: one sort of (z bits, index) keys gives the depth ranks, one sort of
     (tile, rank, block mask) keys the depth-sorted list of every tile (numpy sorts integer keys fast; the keys
     are unique, so no stable sort is needed). A Gaussian is listed for a tile only if one of the tile's 8 x 8
     blocks may hold a pixel with alpha >= 1/255 (opacity >= 1/255 and the block meets the bounding box of the
     ellipse q <= 2 ln(255 o), widened by 1% + 1 px), and the mask says which blocks: nothing else can change a
     pixel;
  3. compositing (jit): one `while_loop` over a queue of (camera, tile, block) work items, longest lists first.
     `SLOTS` blocks are composited at a time, each taking per iteration the next `STEP` entries of its tile's list
     that reach it (among the next `WINDOW`); a block leaves its slot as soon as its list ends or all its pixels
     stopped, and the next queued block takes the slot. No list is padded, no host round trip per chunk.
Agreement with `splat` (tests/render/test_preview.py, tools/bench/turntable.py): every quantity agrees to float32
rounding, not bit for bit (XLA fuses, hence rounds, multiply-adds differently per program, and T is multiplied one
Gaussian at a time here, by cumulative products in `rasterize.forward_xla`), so images agree to ~1e-6. The one
approximation: a discrete test evaluated on such a value (alpha >= 1/255, the 1e-4 stop, the 3-sigma tile
rectangle) flips where the value lies within rounding of its threshold, which changes that pixel by one Gaussian's
weight in it, at most 1/255 for the alpha cut-off; measured, a few pixels per million exceed 1e-3.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from geolrm_kernels.rasterize.reference import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE_SIZE

from geolrm_jax.render import projection

TILE = TILE_SIZE
BLOCK = TILE // 2  # work items are the 4 blocks of 8 x 8 pixels of a tile, each with its own list
SLOTS = 1024  # blocks composited at a time
STEP = 8  # list entries per block and loop iteration
WINDOW = 16  # chosen among this many entries of the tile's list (those that reach the block)
UNROLL = 8  # of the loop over those entries (unrolled: faster, compiles slower)
STORE = 128  # finished blocks stored per iteration at most
GROUP_ITEMS = 4096  # about this many (camera, tile) lists per compositing call


def _project_camera(means, cov, opacities, rgbs, c2w, K, height: int, width: int):
    """One camera. means (3, N), cov (6, N) = Sigma's xx, xy, xz, yy, yz, zz, opacities (N,), rgbs (3, N) ->
    features (N, 9) [mx, my, A, B, C, o, r, g, b] (the rasterizer's, see `rasterize.pack_features`), view z (N,)
    and half-open ranges (N, 4) int16 [x0, y0, x1, y1] of the 8 x 8 blocks each Gaussian may reach (all 0 where it
    reaches none)."""
    camera = projection.camera_from_c2w(c2w, K)
    w, t = camera.w2c[:3, :3], camera.w2c[:3, 3]
    x, y, z = (((means[0] * w[i, 0] + means[1] * w[i, 1]) + means[2] * w[i, 2]) + t[i] for i in range(3))
    in_frustum = z > projection.NEAR_PLANE
    tz = jnp.where(in_frustum, z, 1.0)
    p_w = 1.0 / (tz + 1e-7)
    mean_x = (((x / camera.tan_x) * p_w + 1.0) * width - 1.0) * 0.5
    mean_y = (((y / camera.tan_y) * p_w + 1.0) * height - 1.0) * 0.5
    focal_x, focal_y = width / (2.0 * camera.tan_x), height / (2.0 * camera.tan_y)
    lim_x, lim_y = projection.JACOBIAN_CLAMP * camera.tan_x, projection.JACOBIAN_CLAMP * camera.tan_y
    jx = projection._clamp(x / tz, -lim_x, lim_x) * tz
    jy = projection._clamp(y / tz, -lim_y, lim_y) * tz
    # Rows of J W (J's zero entries dropped: adding them changes no bit).
    j0, j2 = focal_x / tz, -focal_x * jx / (tz * tz)
    k1, k2 = focal_y / tz, -focal_y * jy / (tz * tz)
    t0 = [j0 * w[0, c] + j2 * w[2, c] for c in range(3)]
    t1 = [k1 * w[1, c] + k2 * w[2, c] for c in range(3)]
    s = [[cov[0], cov[1], cov[2]], [cov[1], cov[3], cov[4]], [cov[2], cov[4], cov[5]]]
    u0 = [(t0[0] * s[0][c] + t0[1] * s[1][c]) + t0[2] * s[2][c] for c in range(3)]
    u1 = [(t1[0] * s[0][c] + t1[1] * s[1][c]) + t1[2] * s[2][c] for c in range(3)]
    a = ((u0[0] * t0[0] + u0[1] * t0[1]) + u0[2] * t0[2]) + projection.COV2D_DILATION
    b = (u0[0] * t1[0] + u0[1] * t1[1]) + u0[2] * t1[2]
    c = ((u1[0] * t1[0] + u1[1] * t1[1]) + u1[2] * t1[2]) + projection.COV2D_DILATION
    det = a * c - b * b
    valid = in_frustum & (det != 0)
    safe_det = jnp.where(valid, det, 1.0)
    mid = 0.5 * (a + c)
    lambda1 = jnp.where(valid, mid + jnp.sqrt(jnp.maximum(projection.EIGEN_FLOOR, mid * mid - safe_det)), 1.0)
    radius = jnp.ceil(3.0 * jnp.sqrt(lambda1)).astype(jnp.int32).astype(means.dtype)
    grid_x, grid_y = projection.tiles_grid(height, width)
    bound = lambda v, hi: jnp.clip(jnp.floor(v / TILE), 0, hi)  # noqa: E731 (projection.tile_rect's rounding)
    x0, y0 = bound(mean_x - radius, grid_x), bound(mean_y - radius, grid_y)
    x1, y1 = bound(mean_x + radius + TILE - 1, grid_x), bound(mean_y + radius + TILE - 1, grid_y)
    drawn = valid & ((x1 - x0) * (y1 - y0) > 0) & (opacities >= ALPHA_MIN)
    # alpha = o exp(-q/2) >= 1/255 needs q <= 2 ln(255 o): an ellipse of half-widths sqrt(2 ln(255 o) cov). Keep
    # the 8 x 8 blocks (of the rectangle's tiles) holding a pixel centre within them, with 1% + 1 px of margin for
    # the rounding of the conic and of q: block b holds pixels 8 b .. 8 b + 7.
    reach = 2.0 * jnp.log(255.0 * jnp.maximum(opacities, ALPHA_MIN))
    half_x = jnp.sqrt(reach * jnp.maximum(a, 0.0)) * 1.01 + 1.0
    half_y = jnp.sqrt(reach * jnp.maximum(c, 0.0)) * 1.01 + 1.0
    x0 = jnp.maximum(2 * x0, jnp.ceil((mean_x - half_x - (BLOCK - 1)) / BLOCK))
    y0 = jnp.maximum(2 * y0, jnp.ceil((mean_y - half_y - (BLOCK - 1)) / BLOCK))
    x1 = jnp.minimum(2 * x1, jnp.floor((mean_x + half_x) / BLOCK) + 1)
    y1 = jnp.minimum(2 * y1, jnp.floor((mean_y + half_y) / BLOCK) + 1)
    feats = jnp.stack([jnp.where(in_frustum, mean_x, 0.0), jnp.where(in_frustum, mean_y, 0.0),
                       jnp.where(valid, c / safe_det, 0.0), jnp.where(valid, -b / safe_det, 0.0),
                       jnp.where(valid, a / safe_det, 0.0), opacities, *rgbs], -1)
    x1, y1 = jnp.maximum(x1, x0), jnp.maximum(y1, y0)
    ranges = jnp.stack([jnp.where(drawn, v, 0) for v in (x0, y0, x1, y1)], -1).astype(jnp.int16)
    return feats, z, ranges


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _project(means, cov, opacities, rgbs, c2w, K, height: int, width: int):
    """`_project_camera` vmapped over the cameras of a group: c2w (C, 4, 4), K (C, 3, 3) ->
    features (C, N, 9), view z (C, N), block ranges (C, N, 4)."""
    return jax.vmap(lambda cw, k: _project_camera(means, cov, opacities, rgbs, cw, k, height, width))(c2w, K)


@jax.jit
def _covariances(scales, quats):
    """The 3D covariances of `projection.covariance_3d` as (6, N): xx, xy, xz, yy, yz, zz."""
    sigma = projection.covariance_3d(scales, quats)
    return jnp.stack([sigma[:, i, j] for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))])


ID_BITS = 27  # a list entry packs a depth rank (< 2**27) and, above it, the 4-bit mask of the blocks it reaches
_BLOCK_MASK = np.array([(yb & 1) * xb | (yb >> 1) * xb << 2 for yb in range(4) for xb in range(4)], np.uint8)


def bin_camera(depths, ranges, grid_x: int, grid_y: int):
    """Depth-sorted tile lists of one camera, on the host.

    depths (N,) float32 view z; ranges (N, 4) int16 half-open ranges [x0, y0, x1, y1] of 8 x 8 blocks (empty = not
    drawn; from `_project`). Returns
      by_depth (D,) int32: the drawn Gaussians in (z, index) order; rank r means Gaussian by_depth[r];
      entries (M,) int32: rank | mask << ID_BITS, the tile lists one after the other, each sorted by rank; bit
        2 qy + qx of the mask says whether the Gaussian reaches block (qx, qy) of the tile (its 8 x 8 pixels at
        8 qx, 8 qy);
      tile_start (T + 1,) int32: tile t (row-major, T = grid_x * grid_y) owns entries[tile_start[t]:tile_start[t+1]].
    Both orders come from one sort each of unique integer keys ((z bits, index), then (tile, rank, mask)), which
    numpy sorts fast (no stability needed); z > 0.2 > 0 for drawn Gaussians, whose float32 bits sort like values.
    """
    num_tiles = grid_x * grid_y
    drawn = np.flatnonzero((ranges[:, 2] > ranges[:, 0]) & (ranges[:, 3] > ranges[:, 1]))
    depth_key = depths[drawn].view(np.uint32).astype(np.uint64) << np.uint64(32) | drawn.astype(np.uint64)
    by_depth = (np.sort(depth_key) & np.uint64(0xFFFFFFFF)).astype(np.int32)
    x0, y0, x1, y1 = ranges.view(np.int64)[by_depth, 0].view(np.int16).reshape(-1, 4).astype(np.int32).T
    # The tiles holding those blocks (tile = block // 2), row by row, then tile by tile; keys (tile, rank, mask).
    tx0, ty0 = x0 >> 1, y0 >> 1
    width, height = ((x1 + 1) >> 1) - tx0, ((y1 + 1) >> 1) - ty0
    rank_bits = max(1, (by_depth.size - 1).bit_length()) + 4
    dtype = np.uint32 if rank_bits + max(1, num_tiles.bit_length()) <= 32 else np.uint64
    first_row = np.cumsum(height, dtype=np.int32) - height
    last_row = first_row + height - 1
    num_rows = int(last_row[-1]) + 1 if height.size else 0
    row_y = np.repeat(ty0 - first_row, height) + np.arange(num_rows, dtype=np.int32)
    # Block masks. A row of tiles reaches its top (bottom) blocks unless it is the first (last) row and the block
    # range starts (ends) mid-tile; a tile reaches its left (right) blocks unless it is the first (last) of its row
    # and the range starts (ends) mid-tile. Bit 0 / 1 of `rows`: top / bottom; of `left`, `right`: left / right.
    rows = np.full(num_rows, 3, np.uint8)
    rows[first_row[(y0 & 1) == 1]] &= 2
    rows[last_row[(y1 & 1) == 1]] &= 1
    row_width = np.repeat(width, height)
    row_key = (row_y * grid_x + np.repeat(tx0, height)).astype(dtype) << dtype(rank_bits)
    row_key |= np.repeat(np.arange(by_depth.size, dtype=dtype) << dtype(4), height)
    row_key |= _BLOCK_MASK[rows * 4 + 3]  # the mask of the inner tiles of the row
    first_tile = np.cumsum(row_width, dtype=np.int64) - row_width
    key = np.repeat(row_key - (first_tile.astype(dtype) << dtype(rank_bits)), row_width)
    key += np.arange(key.size, dtype=dtype) << dtype(rank_bits)
    left = np.where(np.repeat(x0 & 1, height) == 1, 2, 3).astype(np.uint8)
    right = np.where(np.repeat(x1 & 1, height) == 1, 1, 3).astype(np.uint8)
    single = row_width == 1
    key[first_tile] ^= _BLOCK_MASK[rows * 4 + 3] ^ _BLOCK_MASK[rows * 4 + np.where(single, left & right, left)]
    wide = np.flatnonzero(~single)
    last = (first_tile + row_width - 1)[wide]
    key[last] ^= _BLOCK_MASK[rows[wide] * 4 + 3] ^ _BLOCK_MASK[rows[wide] * 4 + right[wide]]
    key.sort()
    tile_start = np.searchsorted(key, np.arange(num_tiles + 1, dtype=dtype) << dtype(rank_bits)).astype(np.int32)
    entries = ((key >> dtype(4)) & dtype((1 << (rank_bits - 4)) - 1)) | (key & dtype(15)) << dtype(ID_BITS)
    return by_depth, entries.astype(np.int32), tile_start


@functools.partial(jax.jit, static_argnames=("height", "width", "slots", "step", "window", "unroll"))
def _composite(feats, by_depth, ids, start, end, queue, num_items, background, height: int, width: int,
               slots: int, step: int, window: int, unroll: int = UNROLL):
    """Composite the tile lists of C cameras; returns rgb (C, H, W, 3) clamped to [0, 1].

    feats (C, N, 9) from `_project`; by_depth (C, N) int32 and the list entries ids (capacity,) int32 from
    `bin_camera` per camera (ranks of camera c index by_depth[c]); start, end (C * T,) int32: the list of tile t of
    camera c is ids[start[c T + t]:end[c T + t]]; queue (C * T * 4,) int32 work items
    item = (c T + t) * 4 + block (block 2 qy + qx of the tile), the first `num_items` to render (the others stay
    background); background (3,). slots, step, window, unroll: see SLOTS, STEP, WINDOW, UNROLL.
    """
    cams, num = feats.shape[:2]
    # Features in depth order per camera (row camera * N + rank): the loop then gathers rows by rank alone.
    feats = feats.reshape(cams * num, feats.shape[2])[(jnp.arange(cams) * num)[:, None] + by_depth].reshape(
        cams * num, feats.shape[2])
    grid_x, grid_y = projection.tiles_grid(height, width)
    pixels = BLOCK * BLOCK
    items = cams * grid_x * grid_y * 4
    lx, ly = jnp.arange(pixels) % BLOCK, jnp.arange(pixels) // BLOCK

    def item_state(index):
        """Queue position(s) -> item (`items` = none), first pixel x and y, first feature row of its camera,
        list position and end."""
        has = index < num_items
        item = jnp.where(has, queue[jnp.minimum(index, items - 1)], items)
        safe = jnp.minimum(item, items - 1)
        tile, sub = safe // 4 % (grid_x * grid_y), safe % 4
        x0 = (tile % grid_x * 2 + sub % 2) * BLOCK
        y0 = (tile // grid_x * 2 + sub // 2) * BLOCK
        base = safe // (items // cams) * num
        return item, x0, y0, base, jnp.where(has, start[safe // 4], 0), jnp.where(has, end[safe // 4], 0)

    def outside(x0, y0):
        return (x0[..., None] + lx >= width) | (y0[..., None] + ly >= height)

    def select(item, base, pos, stop_at):
        """The next `step` entries of each slot's tile list that reach its block, among the next `window` ones:
        their feature rows and whether they exist (slots, step), and the list position after them. The result is
        carried to the next iteration, so XLA materializes it instead of fusing it into the features' gather."""
        entries = jax.vmap(lambda p: jax.lax.dynamic_slice(ids, (p,), (window,)))(pos)  # (slots, window)
        reach = (pos[:, None] + jnp.arange(window) < stop_at[:, None]) & (
            (entries >> (ID_BITS + item % 4)[:, None]) & 1 == 1)
        count = jnp.cumsum(reach, axis=1, dtype=jnp.int32)
        pick = reach[:, None, :] & (count[:, None, :] == jnp.arange(1, step + 1)[:, None])  # (slots, step, window)
        rank = jnp.sum(jnp.where(pick, entries[:, None, :] & ((1 << ID_BITS) - 1), 0), -1)
        last = jnp.sum(jnp.where(pick[:, -1], jnp.arange(window), 0), -1)
        found = count[:, -1:] > jnp.arange(step)
        return base[:, None] + rank, found, pos + jnp.where(count[:, -1] >= step, last + 1, window)

    def body(state):
        taken, item, x0, y0, base, rows, found, pos, stop_at, pix, out = state  # pix, out: tuples (T, r, g, b)
        px = (x0[:, None] + lx).astype(feats.dtype)
        py = (y0[:, None] + ly).astype(feats.dtype)
        f = jnp.where(found[..., None], feats[rows], 0.0)  # (slots, step, 9); opacity 0: nothing is drawn

        def entry(j, carry):
            # One list entry for every slot. `run` multiplies T by (1 - alpha) without ever stopping; as T only
            # decreases, an entry is blended iff run stays >= 1e-4 after it, and the first one that is not is where
            # the pixel stops (T = `kept`, the last run >= 1e-4). Entries not drawn get alpha 0 (no change).
            run, kept, red, green, blue = carry
            g = [jax.lax.dynamic_index_in_dim(f[:, :, k], j, 1, keepdims=True) for k in range(9)]  # (slots, 1)
            dx, dy = g[0] - px, g[1] - py
            power = -0.5 * (g[2] * dx * dx + g[4] * dy * dy) - g[3] * dx * dy
            alpha = jnp.minimum(ALPHA_MAX, g[5] * jnp.exp(power))
            alpha = jnp.where((power <= 0) & (alpha >= ALPHA_MIN), alpha, 0.0)
            after = run * (1 - alpha)
            blend = after >= T_MIN
            weight = jnp.where(blend, alpha * run, 0)
            return (after, jnp.where(blend, after, kept), red + weight * g[6], green + weight * g[7],
                    blue + weight * g[8])

        # A pixel that stopped carries -T (its T, negated): -T (1 - alpha) is never >= 1e-4, so it stays as it is.
        trans = pix[0]
        run, kept, *color = jax.lax.fori_loop(0, step, entry, (trans, trans, *pix[1:]), unroll=unroll)
        pix = (jnp.where(trans < 0, trans, jnp.where(run >= T_MIN, run, -kept)), *color)
        finished = (item < items) & ((pos >= stop_at) | jnp.all(pix[0] < 0, -1))
        # Up to `STORE` finished slots store their block (one scatter of that many rows) and take the next queued
        # item; others stay finished (nothing left to draw) until a later iteration. Idle slots (item == items)
        # appear only once the queue is empty.
        which = jnp.nonzero(finished, size=STORE, fill_value=slots)[0]
        stored = jnp.zeros((slots,), bool).at[which].set(True, mode="drop")
        safe = jnp.minimum(which, slots - 1)
        target = jnp.where(which < slots, item[safe], items)
        value = (jnp.abs(pix[0]),) + pix[1:]
        out = tuple(o.at[target].set(v[safe], mode="drop") for o, v in zip(out, value, strict=True))
        num_finished = jnp.sum(stored)
        new = item_state(taken + jnp.cumsum(stored) - 1)
        finished = stored
        item, x0, y0, base, pos, stop_at = (jnp.where(finished, a, b)
                                            for a, b in zip(new, (item, x0, y0, base, pos, stop_at), strict=True))
        pix = (jnp.where(finished[:, None], jnp.where(outside(x0, y0), -1.0, 1.0), pix[0]),
               *(jnp.where(finished[:, None], 0.0, x) for x in pix[1:]))
        rows, found, pos = select(item, base, pos, stop_at)
        return taken + num_finished, item, x0, y0, base, rows, found, pos, stop_at, pix, out

    item, x0, y0, base, pos, stop_at = item_state(jnp.arange(slots))
    rows, found, pos = select(item, base, pos, stop_at)
    zeros = jnp.zeros((slots, pixels), feats.dtype)
    pix = (jnp.where(outside(x0, y0), -1.0, 1.0).astype(feats.dtype), zeros, zeros, zeros)
    out = (jnp.ones((items, pixels), feats.dtype),) + (jnp.zeros((items, pixels), feats.dtype),) * 3
    state = jax.lax.while_loop(lambda s: jnp.any(s[1] < items), body,
                               (jnp.minimum(num_items, slots), item, x0, y0, base, rows, found, pos, stop_at, pix,
                                out))
    out = state[-1]
    rgb = jnp.stack(out[1:]) + out[0] * background[:, None, None]
    rgb = jnp.where(rgb < 0, 0.0, jnp.where(rgb > 1, 1.0, rgb))
    # (3, C * gy * gx * 2 * 2, 8 * 8) -> (C, gy * 16, gx * 16, 3), cropped.
    rgb = rgb.reshape(3, cams, grid_y, grid_x, 2, 2, BLOCK, BLOCK)
    rgb = rgb.transpose(1, 2, 4, 6, 3, 5, 7, 0).reshape(cams, grid_y * TILE, grid_x * TILE, 3)
    return rgb[:, :height, :width]


def render_preview(gaussians, c2w, K, height: int, width: int, background=(1.0, 1.0, 1.0), *,
                   slots: int = SLOTS, step: int = STEP, window: int = WINDOW, unroll: int = UNROLL,
                   group_items: int = GROUP_ITEMS) -> np.ndarray:
    """Render ONE scene into C cameras; returns (C, height, width, 3) float32 numpy in [0, 1].

    gaussians: `Gaussians` with fields (N, ...) or (1, N, ...); c2w (C, 4, 4) OpenGL camera-to-world; K (C, 3, 3)
    normalized intrinsics (only K[1, 1] is read, as in `splat`); background (3,). Cameras are composited in
    groups of about `group_items` tiles, all of the same shapes, so one compilation serves every group unless one
    needs a larger list capacity (grown to a power of two). The host bins a group while XLA composites the
    previous one.
    """
    means, scales, quats, opacities, rgbs = (jnp.asarray(x, jnp.float32) for x in gaussians)
    if means.ndim == 3:
        if means.shape[0] != 1:
            raise ValueError(f"render_preview renders one scene; got Gaussians.means {means.shape}")
        means, scales, quats, opacities, rgbs = (x[0] for x in (means, scales, quats, opacities, rgbs))
    c2w, K = np.asarray(c2w, np.float32), np.asarray(K, np.float32)
    num_cams, num = c2w.shape[0], means.shape[0]
    grid_x, grid_y = projection.tiles_grid(height, width)
    num_items = grid_x * grid_y * 4
    group = int(min(num_cams, max(1, group_items // (grid_x * grid_y))))
    if num >= 1 << ID_BITS or group * num >= 1 << 31 or 2 * max(grid_x, grid_y) > np.iinfo(np.int16).max:
        raise ValueError(f"render_preview: {num} Gaussians or {height} x {width} pixels is too many")
    if num == 0 or num_cams == 0:
        return np.broadcast_to(np.asarray(background, np.float32), (num_cams, height, width, 3)).copy()
    slots = min(slots, 1 << max(6, (group * num_items - 1).bit_length()))  # fewer for small renders
    firsts = list(range(0, num_cams, group))
    cov = _covariances(scales, quats)
    means_t, rgbs_t = means.T, rgbs.T
    background = jnp.asarray(background, jnp.float32)

    def project(first):
        index = np.minimum(np.arange(first, first + group), num_cams - 1)
        return _project(means_t, cov, opacities, rgbs_t, jnp.asarray(c2w[index]), jnp.asarray(K[index]),
                         height=height, width=width)

    capacity, pending = 0, []
    projected = project(firsts[0])
    for g, first in enumerate(firsts):
        feats, depths, ranges = projected
        depths, ranges = np.asarray(depths), np.ascontiguousarray(ranges)
        if g + 1 < len(firsts):
            projected = project(firsts[g + 1])  # queued before this group's compositing: binned meanwhile
        real = min(group, num_cams - first)
        tables = np.zeros((group, num), np.int32)
        lists, starts, offset = [], [], 0
        for cam in range(real):
            by_depth, entries, tile_start = bin_camera(depths[cam], ranges[cam], grid_x, grid_y)
            tables[cam, : by_depth.size] = by_depth
            lists.append(entries)
            starts.append(tile_start + offset)
            offset += entries.size
        starts += [np.full((grid_x * grid_y + 1,), offset, np.int32)] * (group - real)
        start = np.concatenate([s[:-1] for s in starts])
        end = np.concatenate([s[1:] for s in starts])
        lengths = end - start
        order = np.argsort(-lengths, kind="stable")[: np.count_nonzero(lengths)]  # longest lists first
        queue = np.zeros((group * num_items,), np.int32)
        queue[: order.size * 4] = (order[:, None] * 4 + np.arange(4)).ravel()
        if offset + window > capacity:
            capacity = 1 << int(np.ceil(np.log2(max(offset + window, 1024) * 1.25)))
        ids = np.zeros((capacity,), np.int32)
        ids[:offset] = np.concatenate(lists)
        rgb = _composite(feats, jnp.asarray(tables), jnp.asarray(ids), jnp.asarray(start), jnp.asarray(end),
                         jnp.asarray(queue), jnp.int32(order.size * 4), background, height=height, width=width,
                         slots=slots, step=step, window=window, unroll=unroll)
        pending.append((rgb, real))
    return np.concatenate([np.asarray(rgb)[:real] for rgb, real in pending])
