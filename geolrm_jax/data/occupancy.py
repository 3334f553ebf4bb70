"""Occupancy targets of the proposal network, as the original's ``tools/create_occ_gts.py``.

Every view's cleaned depth (0 = invalid) is unprojected with the original's rays (camera-space direction
``((x + .5 - cx) / fx, -(y + .5 - cy) / fy, -1)``, so depth is the z-depth), and each point p is voxelized on a
G^3 grid over [-0.5, 0.5]^3 as ``clip(round((p + 0.5) * G), 0, G - 1)`` (round half to even, like
``torch.round``). Index order is (x, y, z) of the z-up world: ``occupancy[ix, iy, iz]``.
"""

from __future__ import annotations

import numpy as np


def voxelize(points: np.ndarray, grid_size: int) -> np.ndarray:
    """Unique voxel indices (M, 3) int64, sorted, of points (N, 3) on a grid over [-0.5, 0.5]^3."""
    idx = np.round((np.asarray(points, np.float32) + 0.5) * grid_size)
    idx = np.clip(idx, 0, grid_size - 1).astype(np.int64)
    if idx.shape[0] == 0:
        return idx.reshape(0, 3)
    return np.unique(idx, axis=0)


def occupancy_indices(depths, c2ws, Ks, grid_size: int) -> np.ndarray:
    """Sparse occupancy (M, 3) uint16 of an object from all its views: depths (V, H, W), c2ws (V, 4, 4),
    Ks (V, 3, 3)."""
    if grid_size > 65536:
        raise ValueError(f"grid_size {grid_size} does not fit uint16 indices")
    from geolrm_jax import geometry  # imported here: keep jax out of the pipeline's worker processes

    points = [geometry.depth_to_points(d, c, k) for d, c, k in zip(depths, c2ws, Ks, strict=True)]
    return voxelize(np.concatenate(points, 0), grid_size).astype(np.uint16)


def densify(indices: np.ndarray, grid_size: int) -> np.ndarray:
    """Sparse indices (M, 3) -> dense (G, G, G) uint8 occupancy (1 = occupied)."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= grid_size):
        raise ValueError(f"occupancy indices out of range [0, {grid_size})")
    occ = np.zeros((grid_size,) * 3, np.uint8)
    occ[indices[:, 0], indices[:, 1], indices[:, 2]] = 1
    return occ
