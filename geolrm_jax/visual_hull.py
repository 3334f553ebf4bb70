"""The visual hull: a non-learned baseline computed from the same posed input views as the model.

Space carving on a G^3 voxel grid over the object volume [-0.5, 0.5]^3 (voxel centres at
``(i + 0.5) / G - 0.5``, indexed ``[x, y, z]``):

1. **Carving.** A voxel survives when, in every valid input view where its centre projects inside the image
   (and in front of the camera), the input's alpha there, bilinearly interpolated between pixel centres, is at
   least ``threshold`` (0.5), and at least one view sees it (voxels no view constrains are dropped).
2. **Surface.** The surviving voxels with an empty (or out-of-grid) 6-neighbour. Only these are emitted.
3. **Colour, visibility aware.** The hull's own z-depth map in each view (``depth_size``² rays marched through
   the grid in half-voxel steps, the first occupied sample) says which views see a surface voxel: those whose
   hull depth at the voxel's pixel is at most two voxel diagonals in front of the voxel (the slack absorbs
   the staircase of the voxel surface at grazing angles). Its colour is the premultiplied colour of the views
   (``image - (1 - alpha)``, the inputs being composited on white) divided by their alpha, both bilinearly
   sampled at the voxel centre's projection and summed with weights ``visible * (eps + max(0, n . v)^2)``,
   ``n`` the hull normal (minus the gradient of the 3^3 box-blurred occupancy), ``v`` the unit direction to
   the camera, eps = 1e-3. A voxel no view sees gets the same weights without ``visible``.
4. **Gaussians.** One isotropic Gaussian per surface voxel at its centre, standard deviation ``scale`` voxels
   (0.5: neighbours one voxel apart overlap into an opaque surface; larger blurs the silhouette), opacity
   ``opacity`` (0.98), compacted into ``capacity`` slots (padding has opacity 0); ``geolrm-jax eval`` then
   renders and scores them with exactly the code that scores the model.

Cameras follow ``geolrm_jax.geometry`` (OpenGL c2w, normalized K; ``geometry.project_points``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax import geometry
from geolrm_jax.render.gaussians import Gaussians

DEFAULT_GRID_SIZE = 64
DEFAULT_THRESHOLD = 0.5
DEFAULT_SCALE = 0.5  # Gaussian standard deviation in voxels
DEFAULT_OPACITY = 0.98
_COS_FLOOR = 1e-3  # weight of a visible view facing away from the hull normal (thin parts have no normal)


def voxel_centres(grid_size: int) -> jnp.ndarray:
    """(G, G, G, 3) centres of the voxels of [-0.5, 0.5]^3, indexed [x, y, z]."""
    axis = (jnp.arange(grid_size, dtype=jnp.float32) + 0.5) / grid_size - 0.5
    return jnp.stack(jnp.meshgrid(axis, axis, axis, indexing="ij"), -1)


def _bilinear(image, uv):
    """Sample image (H, W, C) at normalized uv (N, 2) (u along the width, pixel centres at (i + 0.5) / W),
    clamped to the border -> (N, C)."""
    h, w = image.shape[:2]
    x = jnp.clip(uv[:, 0] * w - 0.5, 0.0, w - 1.0)
    y = jnp.clip(uv[:, 1] * h - 0.5, 0.0, h - 1.0)
    x0 = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, w - 2) if w > 1 else jnp.zeros_like(x, jnp.int32)
    y0 = jnp.clip(jnp.floor(y).astype(jnp.int32), 0, h - 2) if h > 1 else jnp.zeros_like(y, jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _project(points, c2w, K):
    """points (N, 3), one camera -> (uv (N, 2), z-depth (N,), inside the image and in front (N,) bool)."""
    uv = geometry.project_points(points, c2w, K)
    w2c = geometry.world_to_camera(c2w)
    depth = -(points @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]  # OpenGL cameras look down -z
    inside = (depth > 0) & jnp.all((uv >= 0.0) & (uv <= 1.0), -1)
    return uv, depth, inside


@functools.partial(jax.jit, static_argnames=("grid_size", "threshold"))
def carve(alphas, c2w, K, grid_size: int, view_mask=None, threshold: float = DEFAULT_THRESHOLD) -> jnp.ndarray:
    """Space carving: alphas (V, H, W) in [0, 1], c2w (V, 4, 4), K (V, 3, 3), view_mask (V,) bool or None
    -> occupancy (G, G, G) bool indexed [x, y, z] (rule in the module doc)."""
    points = voxel_centres(grid_size).reshape(-1, 3)
    valid = jnp.ones(alphas.shape[0], bool) if view_mask is None else jnp.asarray(view_mask, bool)

    def one_view(alpha, cw, k, ok):
        uv, _, inside = _project(points, cw, k)
        inside = inside & ok
        covered = _bilinear(alpha[..., None], uv)[:, 0] >= threshold
        return inside & ~covered, inside  # carved by this view, seen by this view

    carved, seen = jax.vmap(one_view)(jnp.asarray(alphas, jnp.float32), c2w, K, valid)
    return (~carved.any(0) & seen.any(0)).reshape((grid_size,) * 3)


@jax.jit
def surface(occupancy) -> jnp.ndarray:
    """Occupied voxels (G, G, G) with an empty or out-of-grid 6-neighbour -> (G, G, G) bool."""
    p = jnp.pad(occupancy, 1, constant_values=False)
    interior = (p[2:, 1:-1, 1:-1] & p[:-2, 1:-1, 1:-1] & p[1:-1, 2:, 1:-1] & p[1:-1, :-2, 1:-1]
                & p[1:-1, 1:-1, 2:] & p[1:-1, 1:-1, :-2])
    return occupancy & ~interior


@jax.jit
def normals(occupancy) -> jnp.ndarray:
    """Outward hull normals (G, G, G, 3): minus the central-difference gradient of the 3^3 box-blurred
    occupancy, normalized (0 where the gradient vanishes, e.g. inside a one-voxel-thin plate)."""
    occ = occupancy.astype(jnp.float32)
    for axis in range(3):
        p = jnp.pad(occ, [(1, 1) if a == axis else (0, 0) for a in range(3)])
        occ = sum(jax.lax.slice_in_dim(p, s, s + occupancy.shape[axis], axis=axis) for s in range(3)) / 3.0
    p = jnp.pad(occ, 1)
    grad = jnp.stack([p[2:, 1:-1, 1:-1] - p[:-2, 1:-1, 1:-1], p[1:-1, 2:, 1:-1] - p[1:-1, :-2, 1:-1],
                      p[1:-1, 1:-1, 2:] - p[1:-1, 1:-1, :-2]], -1)
    norm = jnp.linalg.norm(grad, axis=-1, keepdims=True)
    return jnp.where(norm > 1e-6, -grad / jnp.maximum(norm, 1e-6), 0.0)


@functools.partial(jax.jit, static_argnames=("size",))
def hull_depth(occupancy, c2w, K, size: int) -> jnp.ndarray:
    """z-depth (V, size, size) of the first occupied voxel along each pixel ray (inf where none), marched in
    half-voxel steps through [-0.5, 0.5]^3; c2w (V, 4, 4), K (V, 3, 3)."""
    g = occupancy.shape[0]
    steps = int(math.ceil(2 * math.sqrt(3.0) * g)) + 1
    rays = geometry.pixel_rays(c2w, K, size, size)  # directions have camera z = -1: t is the z-depth
    o, d = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
    safe = jnp.where(jnp.abs(d) < 1e-12, 1e-12, d)
    t_a, t_b = (-0.5 - o) / safe, (0.5 - o) / safe
    t0 = jnp.maximum(jnp.minimum(t_a, t_b).max(-1), 0.0)
    t1 = jnp.maximum(t_a, t_b).min(-1)
    hit_box = t1 > t0
    dt = (0.5 / g) / jnp.linalg.norm(d, axis=-1)  # half a voxel of length

    def body(i, first):
        t = t0 + (i + 0.5) * dt
        idx = jnp.floor((o + t[:, None] * d + 0.5) * g).astype(jnp.int32)
        inside = jnp.all((idx >= 0) & (idx < g), -1) & (t <= t1) & hit_box
        idx = jnp.clip(idx, 0, g - 1)
        occupied = inside & occupancy[idx[:, 0], idx[:, 1], idx[:, 2]]
        return jnp.where(occupied & jnp.isinf(first), t, first)

    first = jax.lax.fori_loop(0, steps, body, jnp.full(o.shape[0], jnp.inf, jnp.float32))
    return first.reshape(c2w.shape[0], size, size)


@jax.jit
def colour(points, point_normals, images, alphas, c2w, K, depth_maps, voxel: float, view_mask=None) -> jnp.ndarray:
    """Visibility-weighted colours (N, 3) of surface points (N, 3) with hull normals (N, 3) from images (V, H, W,
    3) composited on white, alphas (V, H, W), hull depth maps (V, D, D) (weights in the module doc)."""
    valid = jnp.ones(images.shape[0], bool) if view_mask is None else jnp.asarray(view_mask, bool)
    tolerance = 2.0 * math.sqrt(3.0) * voxel

    def one_view(image, alpha, cw, k, depth_map, ok):
        uv, depth, inside = _project(points, cw, k)
        inside = inside & ok
        d = depth_map.shape[0]
        px = jnp.clip(jnp.floor(uv * d).astype(jnp.int32), 0, d - 1)
        visible = inside & (depth <= depth_map[px[:, 1], px[:, 0]] + tolerance)
        to_camera = cw[:3, 3] - points
        to_camera = to_camera / jnp.linalg.norm(to_camera, axis=-1, keepdims=True)
        cos = jnp.maximum(jnp.sum(point_normals * to_camera, -1), 0.0)
        a = _bilinear(alpha[..., None], uv)
        premult = _bilinear(image, uv) - (1.0 - a)
        weight = inside * (_COS_FLOOR + cos**2)
        return visible[:, None] * weight[:, None] * premult, visible * weight * a[:, 0], weight[:, None] * premult, \
            weight * a[:, 0]

    vp, va, wp, wa = jax.vmap(one_view)(jnp.asarray(images, jnp.float32), jnp.asarray(alphas, jnp.float32),
                                        c2w, K, depth_maps, valid)
    vp, va, wp, wa = vp.sum(0), va.sum(0), wp.sum(0), wa.sum(0)
    rgb = jnp.where((va > 1e-6)[:, None], vp / jnp.maximum(va, 1e-6)[:, None],
                    jnp.where((wa > 1e-6)[:, None], wp / jnp.maximum(wa, 1e-6)[:, None], 0.5))
    return jnp.clip(rgb, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("grid_size", "capacity", "depth_size", "threshold", "scale",
                                             "opacity"))
def visual_hull(images, alphas, c2w, K, view_mask=None, *, grid_size: int = DEFAULT_GRID_SIZE, capacity: int,
                depth_size: int | None = None, threshold: float = DEFAULT_THRESHOLD, scale: float = DEFAULT_SCALE,
                opacity: float = DEFAULT_OPACITY) -> tuple[Gaussians, jnp.ndarray]:
    """Visual hull of one object as Gaussians.

    images (V, H, W, 3) in [0, 1] composited on white; alphas (V, H, W) coverage in [0, 1]; c2w (V, 4, 4);
    K (V, 3, 3); view_mask (V,) bool (None: all views). ``depth_size`` is the side of the hull depth maps used
    for visibility (default 2G). Returns (Gaussians with fields (1, capacity, ...), the number of surface voxels
    ()): when it exceeds ``capacity`` the surplus voxels (the last in [x, y, z] order) are dropped; call again
    with a larger capacity (``predictor`` does).
    """
    c2w, K = jnp.asarray(c2w, jnp.float32), jnp.asarray(K, jnp.float32)
    voxel = 1.0 / grid_size
    occupancy = carve(alphas, c2w, K, grid_size, view_mask, threshold)
    shell = surface(occupancy)
    count = shell.sum()
    (index,) = jnp.nonzero(shell.reshape(-1), size=capacity, fill_value=0)
    keep = jnp.arange(capacity) < count
    points = voxel_centres(grid_size).reshape(-1, 3)[index]
    point_normals = normals(occupancy).reshape(-1, 3)[index]
    depth_maps = hull_depth(occupancy, c2w, K, depth_size or 2 * grid_size)
    rgbs = colour(points, point_normals, images, alphas, c2w, K, depth_maps, voxel, view_mask)
    gaussians = Gaussians(
        means=jnp.where(keep[:, None], points, 0.0)[None],
        scales=jnp.full((1, capacity, 3), scale * voxel, jnp.float32),
        quats=jnp.tile(jnp.asarray([1.0, 0.0, 0.0, 0.0], jnp.float32), (1, capacity, 1)),
        opacities=jnp.where(keep, opacity, 0.0)[None],
        rgbs=rgbs[None],
    )
    return gaussians, count


def default_capacity(grid_size: int) -> int:
    """First guess of the number of surface voxels: 8 G^2 (a sphere filling the grid has ~2.4 G^2)."""
    return 8 * grid_size * grid_size


def predictor(grid_size: int = DEFAULT_GRID_SIZE, **kwargs):
    """A ``geolrm_jax.evaluate`` predictor: ``predict(images, c2w, K, alphas) -> Gaussians`` (fields (1, N, ...)),
    growing the capacity (next power of two) and recomputing when the surface has more voxels than slots.
    kwargs go to ``visual_hull`` (threshold, scale, opacity, depth_size)."""
    capacity = default_capacity(grid_size)

    def predict(images, c2w, K, alphas):
        nonlocal capacity
        while True:
            gaussians, count = visual_hull(images, alphas, c2w, K, grid_size=grid_size, capacity=capacity, **kwargs)
            count = int(count)
            if count <= capacity:
                return jax.block_until_ready(gaussians)
            capacity = int(2 ** int(np.ceil(np.log2(count))))

    return predict
