"""Visual hull baseline: carving against the analytic silhouette cones of a sphere, containment and distance
bounds, colours of a solid object and of one half hidden behind another."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from geolrm_jax import evaluate, geometry, geometry_metrics
from geolrm_jax import visual_hull as vh
from geolrm_jax.data import eval_set, gobjaverse_io, procedural

SIZE = 48  # input pixels
GRID = 32
RADIUS = 0.3
RED, BLUE = np.array([0.9, 0.2, 0.1]), np.array([0.1, 0.3, 0.9])


def unlit_spheres(centres, radii, colours) -> procedural.Scene:
    """Solid-coloured spheres without shading (ambient 1, no lights): the image colour is the albedo."""
    p, n = procedural.MAX_PARTS, len(centres)
    z = lambda *shape: np.zeros((p, *shape), np.float32)
    size, centre, cols = z(3) + 0.1, z(3), z(2, 3)
    size[:n, 0], centre[:n], cols[:n] = radii, centres, np.asarray(colours)[:, None]
    return procedural.Scene(
        valid=np.arange(p) < n, kind=np.zeros(p, np.int32), center=centre,
        rotation=np.tile(np.eye(3, dtype=np.float32), (p, 1, 1)), size=size, rounding=z(), shell=z(), cut=z(4),
        has_cut=np.zeros(p, bool), colors=cols, texture=np.zeros(p, np.int32), frequency=np.ones(p, np.float32),
        light_dirs=np.eye(3, dtype=np.float32)[:2], light_weights=np.zeros(2, np.float32),
        ambient=np.float32(1.0))


def zero123pp_inputs(scene):
    """The 6 Zero123++ views of ``scene`` as ``geolrm-jax eval`` feeds them: (images on white, alphas, c2w, K)."""
    cams = geometry.zero123pp_cameras()
    c2w, K = np.asarray(cams.c2w), np.asarray(cams.K)
    rgba, _, _ = eval_set.render_object(scene, c2w, K, SIZE, supersample=2, steps=48)
    composited = [gobjaverse_io.composite(x, SIZE, evaluate.WHITE) for x in rgba]
    return np.stack([c[0] for c in composited]), np.stack([c[1] for c in composited]), c2w, K


@pytest.fixture(scope="module")
def sphere():
    return zero123pp_inputs(unlit_spheres([[0.0, 0.0, 0.0]], [RADIUS], [RED]))


# Zero123++ cameras: radius 4, fov 30 degrees.
DISTANCE, FOV = 4.0, math.radians(30.0)
PIXEL_ANGLE = FOV / SIZE  # angle subtended by a pixel at the image centre (the largest)
PIXEL = 2 * (DISTANCE + 0.5) * math.tan(FOV / 2) / SIZE  # a pixel's width at the far side of the volume
DIAGONAL = math.sqrt(3.0) / GRID
# The hull of a sphere from these views: their 3 azimuth axes 60 degrees apart cut the equatorial section to a
# circumscribed hexagon (vertices at r / cos 30 deg), which bounds every section the 20 / -10 degree elevations
# give; the perspective cones widen it by at most 1 + r k / (D - r k) (~3 %) behind the centre. So the hull lies
# within k r of the centre, k = 1.155 * 1.035 < 1.2.
HULL_EXCESS = 1.2


def cone_angles(points, c2w):
    """Angle (V, N) at each camera centre between the ray to a point and the ray to the sphere's centre."""
    centres = c2w[:, :3, 3]
    to_point = points[None] - centres[:, None]
    cos = np.sum(to_point * -centres[:, None], -1) / (np.linalg.norm(to_point, axis=-1)
                                                       * np.linalg.norm(centres, axis=-1)[:, None])
    return np.arccos(np.clip(cos, -1, 1))


def test_carving_is_the_intersection_of_the_silhouette_cones(sphere):
    images, alphas, c2w, K = sphere
    occupied = np.asarray(vh.carve(alphas, c2w, K, GRID)).reshape(-1)
    centres = np.asarray(vh.voxel_centres(GRID)).reshape(-1, 3)
    half_angle = math.asin(RADIUS / DISTANCE)  # the sphere's silhouette cone in every view
    angles = cone_angles(centres, c2w)
    inside_eroded = np.all(angles <= half_angle - PIXEL_ANGLE, 0)
    inside_dilated = np.all(angles <= half_angle + PIXEL_ANGLE, 0)
    assert np.all(occupied[inside_eroded]), "voxels well inside every cone were carved"
    assert not np.any(occupied[~inside_dilated]), "voxels outside a cone survived"
    assert occupied.sum() > 0.9 * inside_eroded.sum()
    # The hull contains the sphere (up to a pixel at the silhouette).
    assert np.all(occupied[np.linalg.norm(centres, axis=-1) <= RADIUS - PIXEL])
    # A masked-out view is ignored; an empty mask in a valid view carves everything.
    empty = np.zeros_like(alphas[:1])
    with_empty = (np.concatenate([alphas, empty]), np.concatenate([c2w, c2w[:1]]), np.concatenate([K, K[:1]]))
    masked = vh.carve(*with_empty, GRID, view_mask=np.arange(7) < 6)
    np.testing.assert_array_equal(np.asarray(masked).reshape(-1), occupied)
    assert not np.asarray(vh.carve(*with_empty, GRID)).any()


def test_sphere_hull_gaussians_bound_the_sphere_with_its_colour(sphere, monkeypatch):
    images, alphas, c2w, K = sphere
    monkeypatch.setattr(vh, "default_capacity", lambda grid: 256)  # too small: the predictor must grow it
    gaussians = vh.predictor(GRID)(images, c2w, K, alphas)
    opacities = np.asarray(gaussians.opacities[0])
    count = int((opacities > 0).sum())
    capacity = 2 ** math.ceil(math.log2(count))
    assert count > 256 and gaussians.means.shape == (1, capacity, 3)
    assert np.all(opacities[:count] == vh.DEFAULT_OPACITY) and np.all(opacities[count:] == 0)
    np.testing.assert_allclose(np.asarray(gaussians.scales), vh.DEFAULT_SCALE / GRID, rtol=1e-6)
    means = np.asarray(gaussians.means[0, :count])
    radius = np.linalg.norm(means, axis=-1)
    # Surface voxels have an empty neighbour, so lie within a voxel diagonal of the hull's boundary, which is
    # outside the sphere (up to a pixel) and inside HULL_EXCESS * r.
    assert radius.min() >= RADIUS - DIAGONAL - PIXEL, radius.min()
    assert radius.max() <= HULL_EXCESS * RADIUS + PIXEL + DIAGONAL / 2, radius.max()
    # Chamfer to the sphere: each half is at most the hull's excess plus a pixel and half a voxel diagonal.
    golden = np.pi * (3 - np.sqrt(5)) * np.arange(4096)
    z = 1 - 2 * (np.arange(4096) + 0.5) / 4096
    surface = RADIUS * np.stack([np.sqrt(1 - z * z) * np.cos(golden), np.sqrt(1 - z * z) * np.sin(golden), z], -1)
    bound = (HULL_EXCESS - 1) * RADIUS + PIXEL + DIAGONAL / 2
    scores = geometry_metrics.chamfer_fscore(means, surface, threshold=bound)
    assert scores.chamfer < bound and scores.recall == 1.0, (scores, bound)
    np.testing.assert_allclose(np.asarray(gaussians.rgbs[0, :count]), np.broadcast_to(RED, (count, 3)), atol=0.02)
    assert np.all(np.isfinite(np.asarray(gaussians.rgbs)))


def test_colours_come_from_views_that_see_the_voxel():
    """Two spheres on the y axis: from the views at azimuth 90 / 270 each hides the other's facing side, which
    those views would otherwise paint with the wrong colour."""
    centres, radius = np.array([[0.0, 0.28, 0.0], [0.0, -0.28, 0.0]]), 0.15
    images, alphas, c2w, K = zero123pp_inputs(unlit_spheres(centres, [radius, radius], [RED, BLUE]))
    occupancy = vh.carve(alphas, c2w, K, GRID)
    shell = np.asarray(vh.surface(occupancy)).reshape(-1)
    points = np.asarray(vh.voxel_centres(GRID)).reshape(-1, 3)[shell]
    normals = np.asarray(vh.normals(occupancy)).reshape(-1, 3)[shell]
    gap = np.linalg.norm(points[:, None] - centres[None], axis=-1) - radius
    near = gap.min(1) < 1.0 / GRID  # hull voxels on a sphere (not on the hull's bridges between them)
    truth = np.where(gap.argmin(1)[:, None] == 0, RED, BLUE)[near]
    depth = vh.hull_depth(occupancy, c2w, K, 2 * GRID)

    def wrong_fraction(depth_maps):
        rgb = np.asarray(vh.colour(jnp.asarray(points), jnp.asarray(normals), images, alphas, c2w, K, depth_maps,
                                   1.0 / GRID))
        return np.mean(np.abs(rgb[near] - truth).max(-1) > 0.1)

    assert near.sum() > 200
    assert wrong_fraction(depth) < 0.05
    assert wrong_fraction(jnp.full_like(depth, jnp.inf)) > 0.1  # without the visibility test: the scene tests it

