"""Chamfer distance / F-score and the depth-unprojection protocol of geolrm_jax.geometry_metrics."""

import numpy as np
import pytest

from geolrm_jax import geometry
from geolrm_jax import geometry_metrics as gm


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(300, 3)).astype(np.float32)
    p = rng.normal(size=(77, 3)).astype(np.float32)
    want = np.sqrt(((q[:, None] - p[None]) ** 2).sum(-1)).min(-1)
    got = np.asarray(gm.nearest_distances(q, p, chunk=128))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shift, fscore", [(0.05, 1.0), (0.3, 0.0)])
def test_chamfer_fscore_of_a_shifted_grid(shift, fscore):
    # Grid spacing 1 >> shift: every point's nearest neighbour is its own shifted copy.
    axis = np.arange(4, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    scores = gm.chamfer_fscore(grid + np.array([shift, 0, 0], np.float32), grid)
    np.testing.assert_allclose(scores.chamfer, shift, rtol=1e-4)
    assert scores.fscore == fscore and scores.precision == fscore and scores.recall == fscore
    same = gm.chamfer_fscore(grid, grid)
    assert same.chamfer < 1e-3 and same.fscore == 1.0


def test_fscore_precision_recall_asymmetry():
    gt = np.array([[0, 0, 0], [10, 0, 0]], np.float32)
    pred = np.array([[0, 0, 0.1]], np.float32)  # covers only the first GT point
    scores = gm.chamfer_fscore(pred, gt)
    assert scores.precision == 1.0 and scores.recall == 0.5
    np.testing.assert_allclose(scores.fscore, 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(scores.chamfer, 0.5 * (0.1 + 0.5 * (0.1 + np.hypot(10, 0.1))), rtol=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        gm.chamfer_fscore(np.zeros((0, 3)), gt)


def sphere_depth(c2w, K, size, radius):
    """Analytic z-depth maps (V, H, W) of a sphere at the origin (0 where the ray misses)."""
    rays = geometry.pixel_rays(c2w, K, size, size)
    o, d = np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)
    a = (d * d).sum(-1)
    b = 2 * (o * d).sum(-1)
    c = (o * o).sum(-1) - radius**2
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where(disc > 0, t, 0.0).astype(np.float32)  # d has camera z = -1, so t is the z-depth


def test_depth_unprojection_lands_on_the_surface_and_reprojects():
    c2w = np.asarray(geometry.orbit_c2w(3, elevation_deg=20.0, radius=1.5))
    K = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(39.6)), (3, 3, 3))
    depth = sphere_depth(c2w, K, 32, 0.3)
    points = gm.depth_to_points(depth, c2w, K)
    assert points.shape[0] == int((depth > 0).sum()) > 100
    np.testing.assert_allclose(np.linalg.norm(points, axis=-1), 0.3, atol=1e-4)
    # View 0: unprojected pixel centres project back to ((x + .5) / W, (y + .5) / H) (project_points' u, flipped).
    ys, xs = np.nonzero(depth[0] > 0)
    pts0 = gm.depth_to_points(depth[:1], c2w[:1], K[:1])
    uv = np.asarray(geometry.project_points(pts0, c2w[0], K[0]))
    np.testing.assert_allclose(uv[:, 0], (xs + 0.5) / 32, atol=1e-4)
    np.testing.assert_allclose(uv[:, 1], (ys + 0.5) / 32, atol=1e-4)
    alpha = np.zeros_like(depth)
    alpha[0] = 1.0
    assert gm.depth_to_points(depth, c2w, K, alpha).shape[0] == (depth[0] > 0).sum()


def test_gaussians_vs_depth_protocol():
    c2w = np.asarray(geometry.orbit_c2w(4, elevation_deg=20.0, radius=1.5))
    K = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(39.6)), (4, 3, 3))
    depth = sphere_depth(c2w, K, 48, 0.3)
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(4000, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    opacities = np.where(np.arange(4000) < 3000, 0.9, 0.0)  # the last 1000 are padding
    good = gm.gaussians_vs_depth(0.3 * directions, opacities, depth, c2w, K, num_points=2048)
    assert good.fscore > 0.97 and good.chamfer < 0.03, good  # the unseen bottom cap costs a little
    # A sphere 0.15 larger: Chamfer about 0.15 * scale (2) = 0.3 > tau, so the F-score collapses.
    far = gm.gaussians_vs_depth(0.45 * directions, opacities, depth, c2w, K, num_points=2048)
    assert 0.25 < far.chamfer < 0.35 and far.fscore < 0.05
    padded_far = 5.0 * directions * (opacities == 0)[:, None] + 0.3 * directions * (opacities > 0)[:, None]
    same = gm.gaussians_vs_depth(padded_far, opacities, depth, c2w, K, num_points=2048)
    np.testing.assert_allclose(same.chamfer, good.chamfer, rtol=1e-6)  # opacity-0 means are ignored
    with pytest.raises(ValueError, match="no predicted Gaussian"):
        gm.gaussians_vs_depth(directions, np.zeros(4000), depth, c2w, K)
