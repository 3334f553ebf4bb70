"""Tile-intersection stage: per-tile, depth-sorted Gaussian lists from ONE sort on (tile, depth) keys.

The number of (tile, Gaussian) intersections depends on the data, so the list has a static `capacity`. Slots are
handed out in Gaussian index order (like the CUDA duplicateWithKeys pass); intersections beyond the capacity are
dropped and COUNTED in `overflow`, which the caller must check (`render_with_retry` grows the capacity).

Order: by tile, then view z, then Gaussian index (a stable sort), the equivalent of CUDA's 64-bit radix key
`tile << 32 | bits(z)`. Two ways to get it, with identical results:
  * "radix" (default where the bits fit): rank the N Gaussians by (z, index) with one sort of N float bit
    patterns, then sort the slots on ONE uint32 key `tile << rank_bits | rank`, keys only. Single-operand
    integer sorts are what XLA hands to CUB's radix sort on GPU (a 1-D sort; see `sort_u32`).
  * "two_key": one stable `lax.sort` of (tile, z, index) with two keys (a comparison sort on GPU), used when
    ceil(log2(num_tiles + 1)) + ceil(log2(N)) > 32.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from geolrm_kernels.rasterize.reference import tile_rect, tiles_grid
from geolrm_kernels.rasterize.tile_keys_triton import tile_keys

ALL_ONES = 0xFFFFFFFF
# Default of `intersect_tiles(method=None)`; benchmarks set it to "two_key" to time the comparison sort.
METHOD = "auto"
# How the radix method writes its keys: "xla" (slot owners by a scatter and a running max, then gathers; see
# `_slots`) or "pallas" / "pallas_interpret" (each Gaussian writes its own keys,
# geolrm_kernels.rasterize.tile_keys_triton); None = "pallas" on GPU, "xla" elsewhere.
KEYS = None


class TileLists(NamedTuple):
    """Flattened per-tile lists of one camera; tile t owns gaussian_ids[tile_start[t]:tile_end[t]]."""

    gaussian_ids: jnp.ndarray  # (capacity,) int32, sorted by (tile, depth); unused slots hold 0
    tile_start: jnp.ndarray  # (num_tiles,) int32
    tile_end: jnp.ndarray  # (num_tiles,) int32
    overflow: jnp.ndarray  # () int32, intersections that did not fit in the capacity (0 when it suffices)
    num_intersections: jnp.ndarray  # () int32, total intersections (fit or not)


def radix_bits(num_gaussians: int, num_tiles: int) -> tuple[int, int]:
    """(rank_bits, tile_bits) of the single uint32 key; their sum must be <= 32 for the "radix" method."""
    return max(1, (num_gaussians - 1).bit_length()), num_tiles.bit_length()


def sort_u32(keys):
    """Ascending sort of a uint32 vector (1-D, one operand: XLA's GPU backend may run it as a CUB radix sort)."""
    return jax.lax.sort(keys, is_stable=True)


def _rects(means2d, radii, grid_x: int, grid_y: int):
    """Tile rectangles (N, 4), their widths (N,) and tile counts (N,), 0 for culled Gaussians."""
    rect = tile_rect(means2d, radii, grid_x, grid_y)
    rect_w = jnp.where(radii > 0, rect[:, 2] - rect[:, 0], 0)
    rect_h = jnp.where(radii > 0, rect[:, 3] - rect[:, 1], 0)
    return rect, rect_w, rect_w * rect_h


def _slots(means2d, radii, height: int, width: int, capacity: int):
    """Slot -> (Gaussian id, tile id, valid), and the total count; slots handed out in Gaussian order.

    Gaussian g owns slots [offsets[g] - counts[g], offsets[g]); its local index enumerates its tile rectangle
    row-major, as CUDA does. The owner of each slot is found without a search: every Gaussian with tiles writes
    its id at its first slot, and a running max fills the rest (a Gaussian with no tiles starts where the next
    one does, with a smaller id, so it loses).
    """
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    num = means2d.shape[0]
    rect, rect_w, counts = _rects(means2d, radii, grid_x, grid_y)
    offsets = jnp.cumsum(counts)  # inclusive
    total = offsets[-1]
    first = offsets - counts
    ids = jnp.arange(num, dtype=jnp.int32)
    target = jnp.where((counts > 0) & (first < capacity), first, capacity)
    owner = jnp.zeros((capacity,), jnp.int32).at[target].max(ids, mode="drop")
    gid = jax.lax.cummax(owner)
    slots = jnp.arange(capacity, dtype=jnp.int32)
    valid = slots < total
    local = slots - first[gid]
    w = jnp.maximum(rect_w[gid], 1)
    tile = rect[gid, 1] * grid_x + rect[gid, 0] + (local // w) * grid_x + local % w
    tile = jnp.where(valid, tile, num_tiles)
    return gid, tile, valid, total


def tile_ranges(tile_sorted, num_tiles: int):
    """(tile_start, tile_end), each (num_tiles,) int32, of a sorted tile-id vector (ids >= num_tiles unused).

    Equal to searchsorted left/right: the last entry of each present tile scatters its position + 1, and a
    running max over the tiles carries it through absent ones.
    """
    capacity = tile_sorted.shape[0]
    following = jnp.concatenate([tile_sorted[1:], jnp.full((1,), num_tiles, tile_sorted.dtype)])
    is_last = (tile_sorted != following) & (tile_sorted < num_tiles)
    target = jnp.where(is_last, tile_sorted, num_tiles)
    positions = jnp.arange(1, capacity + 1, dtype=jnp.int32)
    tile_end = jax.lax.cummax(jnp.zeros((num_tiles,), jnp.int32).at[target].set(positions, mode="drop"))
    tile_start = jnp.concatenate([jnp.zeros((1,), jnp.int32), tile_end[:-1]])
    return tile_start, tile_end


def radix_keys(means2d, radii, rank, height: int, width: int, capacity: int, rank_bits: int,
               keys: str | None = None):
    """(capacity,) uint32 keys `tile << rank_bits | depth rank` of the slots (all ones where unused), and the
    total number of intersections. keys: see `KEYS` (None = KEYS)."""
    keys = keys or KEYS or ("pallas" if jax.default_backend() == "gpu" else "xla")
    if keys == "xla":
        gid, tile, valid, total = _slots(means2d, radii, height, width, capacity)
        key = (tile.astype(jnp.uint32) << rank_bits) | rank[gid].astype(jnp.uint32)
        return jnp.where(valid, key, jnp.uint32(ALL_ONES)), total
    if keys not in ("pallas", "pallas_interpret"):
        raise ValueError(f"keys must be None, 'xla', 'pallas' or 'pallas_interpret', got {keys!r}")
    grid_x, grid_y = tiles_grid(height, width)
    rect, rect_w, counts = _rects(means2d, radii, grid_x, grid_y)
    offsets = jnp.cumsum(counts)
    key = tile_keys(offsets - counts, counts, rect[:, 1] * grid_x + rect[:, 0], jnp.maximum(rect_w, 1), rank,
                    capacity, grid_x, rank_bits, interpret=keys == "pallas_interpret")
    return key, offsets[-1]


def radix_sorted(key, order, rank_bits: int, num_tiles: int):
    """Slots sorted by their uint32 keys (one keys-only sort) -> (gaussian id, tile id, used) per slot."""
    key = sort_u32(key)
    used = key != jnp.uint32(ALL_ONES)
    tile_sorted = jnp.where(used, key >> rank_bits, num_tiles).astype(jnp.int32)
    gid_sorted = order[(key & jnp.uint32((1 << rank_bits) - 1)).astype(jnp.int32)]
    return gid_sorted, tile_sorted, used


def depth_rank(depths, radii):
    """(order, rank) of the Gaussians by (view z, index), culled ones (radii == 0) last.

    order (N,) int32 lists Gaussian ids front to back; rank (N,) is its inverse permutation. Visible Gaussians
    have z > 0.2 > 0, whose float32 bit patterns sort like the values.
    """
    num = depths.shape[0]
    bits = jax.lax.bitcast_convert_type(depths.astype(jnp.float32), jnp.uint32)
    key = jnp.where(radii > 0, bits, jnp.uint32(ALL_ONES))
    ids = jnp.arange(num, dtype=jnp.int32)
    _, order = jax.lax.sort((key, ids), num_keys=1, is_stable=True)
    rank = jnp.zeros((num,), jnp.int32).at[order].set(ids, unique_indices=True)
    return order, rank


def intersect_tiles(means2d, radii, depths, height: int, width: int, capacity: int,
                    method: str | None = None) -> TileLists:
    """Build the per-tile lists for one camera.

    means2d (N, 2), radii (N,) int32 (0 = culled), depths (N,) view z; height/width/capacity static ints.
    Tiles are numbered row-major: t = ty * grid_x + tx. method: "auto" ("radix" when the key fits 32 bits,
    else "two_key"), "radix" or "two_key" (see the module doc; both give identical lists); None = `METHOD`.
    """
    method = method or METHOD
    grid_x, grid_y = tiles_grid(height, width)
    num_tiles = grid_x * grid_y
    num = means2d.shape[0]
    rank_bits, tile_bits = radix_bits(num, num_tiles)
    fits = rank_bits + tile_bits <= 32
    if method == "auto":
        method = "radix" if fits else "two_key"
    if method not in ("radix", "two_key"):
        raise ValueError(f"method must be 'auto', 'radix' or 'two_key', got {method!r}")
    if method == "radix" and not fits:
        raise ValueError(f"radix key needs {rank_bits} + {tile_bits} > 32 bits (N={num}, {num_tiles} tiles)")
    means2d = jax.lax.stop_gradient(means2d)
    depths = jax.lax.stop_gradient(depths)
    if method == "radix":
        order, rank = depth_rank(depths, radii)
        key, total = radix_keys(means2d, radii, rank, height, width, capacity, rank_bits)
        gid_sorted, tile_sorted, used = radix_sorted(key, order, rank_bits, num_tiles)
    else:
        gid, tile, valid, total = _slots(means2d, radii, height, width, capacity)
        key_depth = jnp.where(valid, depths[gid], 0.0)
        tile_sorted, _, gid_sorted = jax.lax.sort((tile, key_depth, gid), num_keys=2, is_stable=True)
        used = tile_sorted < num_tiles
    tile_start, tile_end = tile_ranges(tile_sorted, num_tiles)
    overflow = jnp.maximum(total - capacity, 0).astype(jnp.int32)
    return TileLists(gaussian_ids=jnp.where(used, gid_sorted, 0), tile_start=tile_start,
                     tile_end=tile_end, overflow=overflow, num_intersections=total.astype(jnp.int32))
