"""Tile-intersection stage: per-tile, depth-sorted Gaussian lists from ONE sort on (tile, depth) keys.

The number of (tile, Gaussian) intersections depends on the data, so the list has a static `capacity`. Slots are
handed out in Gaussian index order (like the CUDA duplicateWithKeys pass); intersections beyond the capacity are
dropped and COUNTED in `overflow`, which the caller must check (`render_with_retry` grows the capacity).

The sort is one stable `lax.sort` with two keys (tile id, view z), the equivalent of CUDA's 64-bit radix key
`tile << 32 | bits(z)`: within a tile, ties keep Gaussian index order.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from geolrm_jax.render.projection import tile_rect, tiles_grid


class TileLists(NamedTuple):
    """Flattened per-tile lists of one camera; tile t owns gaussian_ids[tile_start[t]:tile_end[t]]."""

    gaussian_ids: jnp.ndarray  # (capacity,) int32, sorted by (tile, depth); unused slots hold 0
    tile_start: jnp.ndarray  # (num_tiles,) int32
    tile_end: jnp.ndarray  # (num_tiles,) int32
    overflow: jnp.ndarray  # () int32, intersections that did not fit in the capacity (0 when it suffices)
    num_intersections: jnp.ndarray  # () int32, total intersections (fit or not)


def intersect_tiles(means2d, radii, depths, height: int, width: int, capacity: int) -> TileLists:
    """Build the per-tile lists for one camera.

    means2d (N, 2), radii (N,) int32 (0 = culled), depths (N,) view z; height/width/capacity static ints.
    Tiles are numbered row-major: t = ty * grid_x + tx.
    """
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    means2d = jax.lax.stop_gradient(means2d)
    depths = jax.lax.stop_gradient(depths)
    rect = tile_rect(means2d, radii, grid_x, grid_y)
    rect_w = jnp.where(radii > 0, rect[:, 2] - rect[:, 0], 0)
    rect_h = jnp.where(radii > 0, rect[:, 3] - rect[:, 1], 0)
    counts = rect_w * rect_h
    offsets = jnp.cumsum(counts)  # inclusive
    total = offsets[-1]

    # Slot s belongs to the Gaussian g with offsets[g-1] <= s < offsets[g]; its local index enumerates the
    # rectangle row-major, as CUDA does.
    slots = jnp.arange(capacity, dtype=jnp.int32)
    gid = jnp.searchsorted(offsets, slots, side="right").astype(jnp.int32)
    valid = slots < total
    gid = jnp.minimum(gid, means2d.shape[0] - 1)
    local = slots - (offsets[gid] - counts[gid])
    w = jnp.maximum(rect_w[gid], 1)
    tile_x = rect[gid, 0] + local % w
    tile_y = rect[gid, 1] + local // w
    tile = jnp.where(valid, tile_y * grid_x + tile_x, num_tiles)
    key_depth = jnp.where(valid, depths[gid], 0.0)

    tile_sorted, _, gid_sorted = jax.lax.sort((tile, key_depth, gid), num_keys=2, is_stable=True)
    tile_ids = jnp.arange(num_tiles, dtype=jnp.int32)
    tile_start = jnp.searchsorted(tile_sorted, tile_ids, side="left").astype(jnp.int32)
    tile_end = jnp.searchsorted(tile_sorted, tile_ids, side="right").astype(jnp.int32)
    overflow = jnp.maximum(total - capacity, 0).astype(jnp.int32)
    return TileLists(gaussian_ids=jnp.where(tile_sorted < num_tiles, gid_sorted, 0), tile_start=tile_start,
                     tile_end=tile_end, overflow=overflow, num_intersections=total.astype(jnp.int32))
