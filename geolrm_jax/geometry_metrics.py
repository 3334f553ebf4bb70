"""Geometry metrics: Chamfer distance and F-score between predicted Gaussians and ground-truth depth maps.

Protocol (what ``geolrm-jax eval`` reports as ``chamfer`` and ``fscore``):

1. **Predicted points** = the means of the predicted Gaussians whose opacity is at least ``min_opacity``
   (default 0.05; padding has opacity 0 and is always dropped).
2. **Ground-truth points** = every valid pixel of the ground-truth depth maps of the evaluation views,
   unprojected through its pixel centre (x + 0.5, y + 0.5) with the view's camera. Depth is the view-space z
   (distance along the camera's viewing axis, what the renderer's ``depth`` and the GObjaverse ``_nd.exr``
   hold); a pixel is valid when its depth is > 0 and, if an alpha map is given, its alpha is > 0.5.
3. Both sets are multiplied by ``scale`` (default 2: the GObjaverse object box [-0.5, 0.5]^3 becomes
   [-1, 1]^3, the normalization under which the paper's 0.2 threshold is stated) and each is subsampled to
   ``num_points`` (default 16384) points with a fixed seed (with replacement when it has fewer).
4. With d(a, B) = min_b ||a - b||_2 (Euclidean, not squared):

   * Chamfer distance = ½ (mean_{p in P} d(p, G) + mean_{g in G} d(g, P));
   * precision = fraction of p with d(p, G) < tau, recall = fraction of g with d(g, P) < tau,
     F-score = 2 PR / (P + R) (0 when both are 0), tau = 0.2.

The nearest-neighbour search is exact (brute force in JAX, chunked so memory stays O(chunk * M)).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax import geometry

FSCORE_THRESHOLD = 0.2
DEFAULT_SCALE = 2.0
DEFAULT_NUM_POINTS = 16384
# Gaussians at or above this opacity count as the predicted surface (geometry metrics, the mesh's bounds); the
# exports' threshold is another one (``export.DEFAULT_MIN_OPACITY``, the original's 0.005).
SURFACE_MIN_OPACITY = 0.05


class GeometryScores(NamedTuple):
    chamfer: float
    fscore: float
    precision: float
    recall: float


def nearest_distances(queries, points, chunk: int = 1024) -> jnp.ndarray:
    """Euclidean distance from each query (N, 3) to its nearest point in ``points`` (M, 3) -> (N,)."""
    queries = jnp.asarray(queries, jnp.float32)
    points = jnp.asarray(points, jnp.float32)
    n = queries.shape[0]
    pad = (-n) % chunk
    padded = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, 3)
    points_sq = jnp.sum(points * points, -1)

    def one_chunk(q):
        # ||q - p||^2 = |q|^2 - 2 q.p + |p|^2, clamped against round-off below zero.
        d2 = jnp.sum(q * q, -1)[:, None] - 2.0 * q @ points.T + points_sq[None, :]
        return jnp.sqrt(jnp.maximum(jnp.min(d2, axis=-1), 0.0))

    return jax.lax.map(one_chunk, padded).reshape(-1)[:n]


def chamfer_fscore(pred_points, gt_points, threshold: float = FSCORE_THRESHOLD) -> GeometryScores:
    """Chamfer distance and F-score between point sets (N, 3) and (M, 3), as defined in the module doc."""
    pred_points = np.asarray(pred_points, np.float32)
    gt_points = np.asarray(gt_points, np.float32)
    if pred_points.shape[0] == 0 or gt_points.shape[0] == 0:
        raise ValueError(f"chamfer_fscore needs non-empty point sets, got {pred_points.shape[0]} predicted and "
                         f"{gt_points.shape[0]} ground-truth points")
    d_pred = np.asarray(nearest_distances(pred_points, gt_points))
    d_gt = np.asarray(nearest_distances(gt_points, pred_points))
    chamfer = 0.5 * (float(d_pred.mean()) + float(d_gt.mean()))
    precision = float(np.mean(d_pred < threshold))
    recall = float(np.mean(d_gt < threshold))
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return GeometryScores(chamfer, fscore, precision, recall)


def depth_to_points(depth, c2w, K, alpha=None) -> np.ndarray:
    """Unproject view-space z depth maps (V, H, W) with cameras (V, 4, 4), (V, 3, 3) -> valid points (P, 3).

    Valid pixels: depth > 0 (and alpha > 0.5 when ``alpha`` (V, H, W) is given); see ``geometry.depth_to_points``.
    """
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 3:
        raise ValueError(f"depth must have shape (V, H, W), got {depth.shape}")
    return geometry.depth_to_points(depth, c2w, K, None if alpha is None else np.asarray(alpha) > 0.5)


def gaussian_points(means, opacities, min_opacity: float = SURFACE_MIN_OPACITY) -> np.ndarray:
    """Means (N, 3) of the Gaussians with opacity (N,) >= ``min_opacity``."""
    means = np.asarray(means, np.float32).reshape(-1, 3)
    opacities = np.asarray(opacities, np.float32).reshape(-1)
    return means[opacities >= min_opacity]


def subsample(points: np.ndarray, num_points: int, seed: int = 0) -> np.ndarray:
    """``num_points`` rows of ``points`` drawn with a fixed seed (with replacement when there are fewer)."""
    rng = np.random.default_rng(seed)
    replace = points.shape[0] < num_points
    return points[rng.choice(points.shape[0], num_points, replace=replace)]


def gaussians_vs_depth(means, opacities, depth, c2w, K, alpha=None, *, min_opacity: float = SURFACE_MIN_OPACITY,
                       scale: float = DEFAULT_SCALE, num_points: int = DEFAULT_NUM_POINTS,
                       threshold: float = FSCORE_THRESHOLD, seed: int = 0) -> GeometryScores:
    """The full protocol of the module doc for one object.

    means (N, 3), opacities (N,) of one scene's Gaussians; depth (V, H, W), c2w (V, 4, 4), K (V, 3, 3),
    alpha (V, H, W) or None for its ground-truth views.
    """
    pred = gaussian_points(means, opacities, min_opacity)
    gt = depth_to_points(depth, c2w, K, alpha)
    if pred.shape[0] == 0:
        raise ValueError(f"no predicted Gaussian has opacity >= {min_opacity}")
    if gt.shape[0] == 0:
        raise ValueError("the ground-truth depth maps have no valid pixel")
    pred = subsample(pred, num_points, seed) * scale
    gt = subsample(gt, num_points, seed + 1) * scale
    return chamfer_fscore(pred, gt, threshold)
