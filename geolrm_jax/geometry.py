"""Camera geometry with the conventions of the original GeoLRM.

Conventions (all functions are batched over leading axes and jit-able):

* ``c2w``: (..., 4, 4) camera-to-world, OpenGL/Blender axes: camera x right, y up, looking down -z.
  The world is z-up.
* ``K``: (..., 3, 3) intrinsics normalized by the image size: ``fx = 0.5 / tan(fov / 2)``,
  ``cx = cy = 0.5``. Multiply the first row by W and the second by H to get pixels.
* Angles given to the pose helpers are in degrees.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Blender/OpenGL <-> OpenCV (and GObjaverse/Unity-render JSON) camera axes.
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)


def _normalize(v, eps=1e-12):
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), eps)


def fov_to_intrinsics(fov_deg) -> jnp.ndarray:
    """Field of view (degrees, (...,)) -> normalized intrinsics (..., 3, 3), as GeoLRM's FOV_to_intrinsics."""
    fov = jnp.deg2rad(jnp.asarray(fov_deg, jnp.float32))
    f = 0.5 / jnp.tan(fov / 2)
    zeros, ones, half = jnp.zeros_like(f), jnp.ones_like(f), jnp.full_like(f, 0.5)
    rows = [
        jnp.stack([f, zeros, half], -1),
        jnp.stack([zeros, f, half], -1),
        jnp.stack([zeros, zeros, ones], -1),
    ]
    return jnp.stack(rows, -2)


def look_at(camera_position, target=None, up=None) -> jnp.ndarray:
    """Camera-to-world matrices (..., 4, 4) of cameras at ``camera_position`` (..., 3) looking at ``target``.

    Matches GeoLRM's ``center_looking_at_camera_pose``: z axis = normalize(position - target),
    x = normalize(up x z), y = z x x, with a z-up world by default.
    """
    pos = jnp.asarray(camera_position, jnp.float32)
    target = jnp.zeros(3, jnp.float32) if target is None else jnp.asarray(target, jnp.float32)
    up = jnp.asarray([0.0, 0.0, 1.0] if up is None else up, jnp.float32)
    z = _normalize(pos - target)
    x = _normalize(jnp.cross(jnp.broadcast_to(up, z.shape), z))
    y = _normalize(jnp.cross(z, x))
    rot_t = jnp.stack([x, y, z, pos], -1)  # (..., 3, 4), columns are the axes and the centre
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], jnp.float32), pos.shape[:-1] + (1, 4))
    return jnp.concatenate([rot_t, bottom], -2)


def spherical_positions(azimuth_deg, elevation_deg, radius) -> jnp.ndarray:
    """Points (..., 3) on a z-up sphere: azimuth from +x towards +y, elevation above the xy plane."""
    az = jnp.deg2rad(jnp.asarray(azimuth_deg, jnp.float32))
    el = jnp.deg2rad(jnp.asarray(elevation_deg, jnp.float32))
    radius = jnp.asarray(radius, jnp.float32)
    az, el, radius = jnp.broadcast_arrays(az, el, radius)
    return jnp.stack(
        [radius * jnp.cos(el) * jnp.cos(az), radius * jnp.cos(el) * jnp.sin(az), radius * jnp.sin(el)], -1
    )


def spherical_c2w(azimuth_deg, elevation_deg, radius) -> jnp.ndarray:
    """Look-at-origin poses (..., 4, 4) on a sphere, as GeoLRM's ``get_circular_camera_poses`` builds them."""
    return look_at(spherical_positions(azimuth_deg, elevation_deg, radius))


def orbit_c2w(num_views: int, elevation_deg=0.0, radius=1.5, start_azimuth_deg=0.0) -> jnp.ndarray:
    """``num_views`` poses (V, 4, 4) evenly spaced in azimuth over [start, start + 360) at one elevation."""
    az = start_azimuth_deg + jnp.arange(num_views, dtype=jnp.float32) * (360.0 / num_views)
    return spherical_c2w(az, jnp.full_like(az, elevation_deg), radius)


class CameraSet(NamedTuple):
    """A set of V cameras: ``c2w`` (V, 4, 4) and normalized ``K`` (V, 3, 3)."""

    c2w: jnp.ndarray
    K: jnp.ndarray


def sv3d_cameras() -> CameraSet:
    """SV3D orbit: 21 views, azimuth 0..360 exclusive, elevation 10 deg, radius 1.5, fov 39.6 deg."""
    c2w = orbit_c2w(21, elevation_deg=10.0, radius=1.5)
    return CameraSet(c2w, jnp.broadcast_to(fov_to_intrinsics(39.6), (21, 3, 3)))


def zero123pp_cameras() -> CameraSet:
    """Zero123++ v1.2 grid: 6 views at azimuths 30..330 (step 60), elevations 20/-10 alternating, radius 4."""
    az = jnp.arange(30.0, 360.0, 60.0)
    el = jnp.asarray([20.0, -10.0] * 3)
    c2w = spherical_c2w(az, el, 4.0)
    return CameraSet(c2w, jnp.broadcast_to(fov_to_intrinsics(30.0), (6, 3, 3)))


CAMERA_PRESETS = {"sv3d": sv3d_cameras, "zero123pp": zero123pp_cameras}


class Rays(NamedTuple):
    """Per-pixel rays: ``origins`` and ``directions``, both (..., H, W, 3), in world coordinates."""

    origins: jnp.ndarray
    directions: jnp.ndarray


def pixel_rays(c2w, K, height: int, width: int) -> Rays:
    """Rays through pixel centres (x + 0.5, y + 0.5) of an H x W image, as the original's ray embedding.

    The directions are NOT normalized: d = R @ ((x + .5 - cx) / fx, -(y + .5 - cy) / fy, -1) with cx, fx in
    pixels (cx = K[0, 2] * W, fx = K[0, 0] * W, and likewise with H for y). x runs along the width.
    """
    c2w = jnp.asarray(c2w, jnp.float32)
    K = jnp.asarray(K, jnp.float32)
    fx = K[..., 0, 0] * width
    fy = K[..., 1, 1] * height
    cx = K[..., 0, 2] * width
    cy = K[..., 1, 2] * height
    xs = jnp.arange(width, dtype=jnp.float32) + 0.5
    ys = jnp.arange(height, dtype=jnp.float32) + 0.5
    ex = lambda a: a[..., None, None]
    dx = (xs[None, :] - ex(cx)) / ex(fx)  # (..., 1, W)
    dy = -(ys[:, None] - ex(cy)) / ex(fy)  # (..., H, 1)
    dx, dy = jnp.broadcast_arrays(dx, dy)
    cam_dirs = jnp.stack([dx, dy, -jnp.ones_like(dx)], -1)  # (..., H, W, 3)
    rot = c2w[..., :3, :3]
    dirs = jnp.einsum("...ij,...hwj->...hwi", rot, cam_dirs)
    origins = jnp.broadcast_to(c2w[..., None, None, :3, 3], dirs.shape)
    return Rays(origins, dirs)


@functools.cache
def _compiled_pixel_rays():
    return jax.jit(pixel_rays, static_argnums=(2, 3))


def host_pixel_rays(c2w, K, height: int, width: int) -> Rays:
    """``pixel_rays`` of numpy cameras by one compiled program per image size and batch shape, as float32 numpy
    arrays (for host-side code: data generation, occupancy targets, metrics)."""
    rays = _compiled_pixel_rays()(np.asarray(c2w, np.float32), np.asarray(K, np.float32), height, width)
    return Rays(np.asarray(rays.origins, np.float32), np.asarray(rays.directions, np.float32))


def depth_to_points(depth, c2w, K, valid=None) -> np.ndarray:
    """World points (P, 3) float32 of view-space z depth maps (..., H, W) with cameras (..., 4, 4), (..., 3, 3):
    the pixels with depth > 0 (and ``valid``, a bool mask like depth, where given), in row-major order.

    ``pixel_rays`` directions have camera-space z component -1, so o + z d lies at view depth z."""
    depth = np.asarray(depth, np.float32)
    origins, directions = host_pixel_rays(c2w, K, depth.shape[-2], depth.shape[-1])
    keep = depth > 0
    if valid is not None:
        keep &= np.asarray(valid, bool)
    return origins[keep] + directions[keep] * depth[keep][:, None]


def plucker_embedding(c2w, K, height: int, width: int) -> jnp.ndarray:
    """Plücker ray embedding (..., H, W, 6) = [d, o x d], with d un-normalized as in ``pixel_rays``."""
    rays = pixel_rays(c2w, K, height, width)
    return jnp.concatenate([rays.directions, jnp.cross(rays.origins, rays.directions)], -1)


def project_points(points, c2w, K) -> jnp.ndarray:
    """Project world points (..., N, 3) into cameras (..., 4, 4) -> normalized uv (..., N, 2).

    As the original: P = K @ inverse(c2w)[:3, :4], uv = p.xy / p.z, then u <- 1 - u (the OpenGL camera
    looks down -z, so p.z < 0 in front of it). u runs along the width, v down the height, with the image
    spanning [0, 1]. Points outside [0, 1] or behind the camera are returned as computed.
    """
    points = jnp.asarray(points, jnp.float32)
    w2c = jnp.linalg.inv(jnp.asarray(c2w, jnp.float32))
    proj = jnp.einsum("...ij,...jk->...ik", jnp.asarray(K, jnp.float32), w2c[..., :3, :4])
    homo = jnp.concatenate([points, jnp.ones_like(points[..., :1])], -1)
    p = jnp.einsum("...ij,...nj->...ni", proj, homo)
    uv = p[..., :2] / p[..., 2:3]
    return jnp.stack([1.0 - uv[..., 0], uv[..., 1]], -1)


def world_to_camera(c2w) -> jnp.ndarray:
    """Inverse of rigid camera-to-world matrices (..., 4, 4), using the transpose of the rotation."""
    c2w = jnp.asarray(c2w, jnp.float32)
    rot_t = jnp.swapaxes(c2w[..., :3, :3], -1, -2)
    trans = -jnp.einsum("...ij,...j->...i", rot_t, c2w[..., :3, 3])
    top = jnp.concatenate([rot_t, trans[..., None]], -1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], jnp.float32), c2w.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], -2)


# ----------------------------------------------------------------------------------------------
# Host-side readers and validation (numpy; not traced).


def read_gobjaverse_camera(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a GObjaverse camera JSON -> (c2w (4, 4) OpenGL, K (3, 3) normalized), both float32.

    The JSON holds the camera axes ``x``, ``y``, ``z`` and the centre ``origin`` in world coordinates (OpenCV
    axes: y down, looking down +z) and the fields of view ``x_fov``, ``y_fov`` in radians. The OpenGL pose is
    ``[x y z origin] @ diag(1, -1, -1, 1)``.
    """
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read camera JSON: {err}") from err
    return gobjaverse_camera_from_dict(meta, source=str(path))


def gobjaverse_camera_from_dict(meta: dict, source: str = "<camera>") -> tuple[np.ndarray, np.ndarray]:
    """The parsing half of ``read_gobjaverse_camera``; ``source`` names the file in error messages."""
    c2w = np.eye(4, dtype=np.float64)
    for col, key in enumerate(("x", "y", "z", "origin")):
        if key not in meta:
            raise ValueError(f"{source}: camera JSON has no field '{key}'")
        value = np.asarray(meta[key], dtype=np.float64)
        if value.shape != (3,):
            raise ValueError(f"{source}: field '{key}' must hold 3 numbers, got shape {value.shape}")
        c2w[:3, col] = value
    fovs = []
    for key in ("x_fov", "y_fov"):
        if key not in meta:
            raise ValueError(f"{source}: camera JSON has no field '{key}'")
        fovs.append(float(meta[key]))
    c2w = c2w @ FLIP_YZ.astype(np.float64)
    K = np.array(
        [[0.5 / math.tan(fovs[0] / 2), 0, 0.5], [0, 0.5 / math.tan(fovs[1] / 2), 0.5], [0, 0, 1]], np.float64
    )
    validate_cameras(c2w, K, source=source)
    return c2w.astype(np.float32), K.astype(np.float32)


def validate_cameras(c2w, K, source: str = "cameras", atol: float = 1e-3) -> None:
    """Check user-supplied cameras on the host; raise ``ValueError`` naming the problem and the camera.

    c2w: (..., 4, 4) with finite values, an orthonormal right-handed rotation and a [0, 0, 0, 1] last row.
    K: (..., 3, 3) with finite values and positive focal lengths.
    """
    c2w = np.asarray(c2w, np.float64)
    K = np.asarray(K, np.float64)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"{source}: c2w must have shape (..., 4, 4), got {c2w.shape}")
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"{source}: K must have shape (..., 3, 3), got {K.shape}")
    flat_c2w = c2w.reshape(-1, 4, 4)
    flat_k = K.reshape(-1, 3, 3)
    for i, m in enumerate(flat_c2w):
        where = f"{source}: camera {i}"
        if not np.all(np.isfinite(m)):
            raise ValueError(f"{where}: c2w has non-finite values")
        rot = m[:3, :3]
        err = np.abs(rot.T @ rot - np.eye(3)).max()
        if err > atol:
            raise ValueError(f"{where}: c2w rotation is not orthonormal (max |R^T R - I| = {err:.3g})")
        if np.linalg.det(rot) < 0:
            raise ValueError(f"{where}: c2w rotation is a reflection (det < 0)")
        if np.abs(m[3] - np.array([0, 0, 0, 1.0])).max() > atol:
            raise ValueError(f"{where}: c2w last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    for i, k in enumerate(flat_k):
        where = f"{source}: camera {i}"
        if not np.all(np.isfinite(k)):
            raise ValueError(f"{where}: K has non-finite values")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"{where}: K focal lengths must be positive, got fx={k[0, 0]}, fy={k[1, 1]}")
