"""Projection stage of the splatter: cameras and 3D Gaussians -> 2D Gaussians in pixel space.

Mirrors the "classic" 3DGS rasterizer (diff-gaussian-rasterization, ashawkey's depth fork) as GeoLRM calls it;
the constants are the float32 values of the CUDA code. See ../shared/fixtures/splat_small/README.md.

Conventions:
  * c2w (4, 4): OpenGL/Blender camera-to-world (x right, y up, looking down -z).
  * K (3, 3): intrinsics normalized by the image size; ONLY K[1, 1] is read and used for both tan values
    (GeoLRM assigns tan_half_fovx twice). The principal point is always the image centre.
  * Pixel (x, y) is evaluated at integer coordinates (x, y); the projected mean is
    ndc2Pix(v, S) = ((v + 1) S - 1) / 2.
  * Quaternions (w, x, y, z), not normalized.

Everything is differentiable with jax autodiff; culled Gaussians are computed from safe substitutes
(double-where), so their gradients are exactly 0 and never NaN.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from geolrm_kernels.rasterize.reference import tile_rect, tiles_grid

NEAR_PLANE = 0.2
JACOBIAN_CLAMP = 1.3
COV2D_DILATION = 0.3
EIGEN_FLOOR = 0.1


class Camera(NamedTuple):
    """What the rasterizer sees of one camera."""

    w2c: jnp.ndarray  # (4, 4) OpenCV world-to-camera (x right, y down, z forward): p_view = w2c @ [p, 1]
    tan_x: jnp.ndarray  # () tan of half the horizontal fov (= 1 / (2 K[1, 1]))
    tan_y: jnp.ndarray  # () tan of half the vertical fov (= 1 / (2 K[1, 1]))


class Projected(NamedTuple):
    """Per-Gaussian output of the projection stage (N = number of Gaussians)."""

    means2d: jnp.ndarray  # (N, 2) pixel coordinates (x, y)
    conics: jnp.ndarray  # (N, 3) (A, B, C) of the inverse 2D covariance
    depths: jnp.ndarray  # (N,) view-space z (sort key and z_i of the depth output)
    radii: jnp.ndarray  # (N,) int32 ceil(3 sqrt(lambda_max)); 0 where culled
    cov2d: jnp.ndarray  # (N, 3) (a, b, c) of the 2D covariance including the +0.3 dilation
    in_frustum: jnp.ndarray  # (N,) bool, view z > 0.2
    jac_clamped: jnp.ndarray  # (N,) bool, the 1.3 tan clamp of the EWA Jacobian is active


def camera_from_c2w(c2w, K) -> Camera:
    """GeoLRM's camera conversion: c2w (4, 4) OpenGL + normalized K (3, 3) -> `Camera`.

    w2c = inverse(c2w @ diag(1, -1, -1, 1)), computed with a general (cofactor) inverse so that the c2w gradient
    is the exact derivative of the original (which inverts with torch.inverse).
    """
    flip = jnp.asarray([1.0, -1.0, -1.0, 1.0], c2w.dtype)
    w2c = inverse_4x4(c2w * flip[None, :])
    tan = 1.0 / (2.0 * K[1, 1])
    return Camera(w2c=w2c, tan_x=tan, tan_y=tan)


def inverse_4x4(m) -> jnp.ndarray:
    """General inverse of a (4, 4) matrix by cofactors (elementwise float32; no LU/TF32 on GPU)."""
    a = [[m[i, j] for j in range(4)] for i in range(4)]
    s0 = a[0][0] * a[1][1] - a[1][0] * a[0][1]
    s1 = a[0][0] * a[1][2] - a[1][0] * a[0][2]
    s2 = a[0][0] * a[1][3] - a[1][0] * a[0][3]
    s3 = a[0][1] * a[1][2] - a[1][1] * a[0][2]
    s4 = a[0][1] * a[1][3] - a[1][1] * a[0][3]
    s5 = a[0][2] * a[1][3] - a[1][2] * a[0][3]
    c5 = a[2][2] * a[3][3] - a[3][2] * a[2][3]
    c4 = a[2][1] * a[3][3] - a[3][1] * a[2][3]
    c3 = a[2][1] * a[3][2] - a[3][1] * a[2][2]
    c2 = a[2][0] * a[3][3] - a[3][0] * a[2][3]
    c1 = a[2][0] * a[3][2] - a[3][0] * a[2][2]
    c0 = a[2][0] * a[3][1] - a[3][0] * a[2][1]
    det = s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
    adj = [
        [a[1][1] * c5 - a[1][2] * c4 + a[1][3] * c3, -a[0][1] * c5 + a[0][2] * c4 - a[0][3] * c3,
         a[3][1] * s5 - a[3][2] * s4 + a[3][3] * s3, -a[2][1] * s5 + a[2][2] * s4 - a[2][3] * s3],
        [-a[1][0] * c5 + a[1][2] * c2 - a[1][3] * c1, a[0][0] * c5 - a[0][2] * c2 + a[0][3] * c1,
         -a[3][0] * s5 + a[3][2] * s2 - a[3][3] * s1, a[2][0] * s5 - a[2][2] * s2 + a[2][3] * s1],
        [a[1][0] * c4 - a[1][1] * c2 + a[1][3] * c0, -a[0][0] * c4 + a[0][1] * c2 - a[0][3] * c0,
         a[3][0] * s4 - a[3][1] * s2 + a[3][3] * s0, -a[2][0] * s4 + a[2][1] * s2 - a[2][3] * s0],
        [-a[1][0] * c3 + a[1][1] * c1 - a[1][2] * c0, a[0][0] * c3 - a[0][1] * c1 + a[0][2] * c0,
         -a[3][0] * s3 + a[3][1] * s1 - a[3][2] * s0, a[2][0] * s3 - a[2][1] * s1 + a[2][2] * s0],
    ]
    return jnp.stack([jnp.stack(row) for row in adj]) / det


def small_matmul(a, b) -> jnp.ndarray:
    """a (..., m, k) @ b (..., k, n) for tiny k as k broadcast products added up: exact float32 (no TF32) and one
    elementwise fusion on GPU, where a batched dot of 3x3 matrices would be a slow library call.

    The k terms are added one by one rather than by a reduce over a broadcast axis: under
    ``jit(vmap(grad(...)))`` of a render with several objects and cameras, XLA:CPU hands such reduces to its
    YNNPACK fusions, whose transposed variant crashes (segmentation fault; see docs/transforms.md)."""
    terms = [a[..., :, k, None] * b[..., None, k, :] for k in range(a.shape[-1])]
    return functools.reduce(jnp.add, terms)


def quat_to_rotmat(quats) -> jnp.ndarray:
    """Raw (un-normalized) rotation matrices (..., 3, 3) from quaternions (..., 4) in (w, x, y, z) order."""
    r, x, y, z = jnp.moveaxis(quats, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y)],
        [2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x)],
        [2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(row, -1) for row in rows], -2)


def covariance_3d(scales, quats) -> jnp.ndarray:
    """Sigma = R diag(s^2) R^T, (..., 3, 3), from activated scales (..., 3) and raw quaternions (..., 4)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return small_matmul(m, jnp.swapaxes(m, -1, -2))


def _clamp(x, lo, hi):
    # where-based clamp: derivative exactly 1 inside, 0 outside (jnp.clip gives 0.5 at the bounds).
    return jnp.where(x < lo, lo, jnp.where(x > hi, hi, x))


def project_gaussians(means, scales, quats, camera: Camera, height: int, width: int, *,
                      cuda_gradient: bool = False) -> Projected:
    """Project N Gaussians (means (N, 3), scales (N, 3), quats (N, 4)) into one camera.

    Steps 2-8 of the splat_small algorithm: near culling at view z <= 0.2, mean projection with the +1e-7 in
    p_w, EWA covariance with the 1.3 tan clamp in J only, +0.3 dilation, conic, radius with the 0.1 eigenvalue
    floor, and culling of Gaussians whose tile rectangle is empty (radius 0). `cuda_gradient=True` treats the
    clamped t.x, t.y as constants in J, as the CUDA backward does.
    """
    dtype = means.dtype
    rot_w, trans_w = camera.w2c[:3, :3], camera.w2c[:3, 3]
    p_view = small_matmul(means[:, None, :], rot_w.T)[:, 0] + trans_w
    z = p_view[:, 2]
    in_frustum = z > NEAR_PLANE
    # Double-where: culled Gaussians get a harmless depth so no inf/NaN enters the graph.
    safe_z = jnp.where(in_frustum, z, jnp.ones_like(z))
    safe_view = jnp.concatenate([p_view[:, :2], safe_z[:, None]], -1)
    tx, ty, tz = safe_view[:, 0], safe_view[:, 1], safe_view[:, 2]

    # Mean: p_hom = [p, 1] @ projmatrix, so p_hom.x = x / tan_x, p_hom.w = z; ndc2Pix after the 1e-7 p_w.
    p_w = 1.0 / (tz + 1e-7)
    ndc_x = (tx / camera.tan_x) * p_w
    ndc_y = (ty / camera.tan_y) * p_w
    mean_x = ((ndc_x + 1.0) * width - 1.0) * 0.5
    mean_y = ((ndc_y + 1.0) * height - 1.0) * 0.5
    means2d = jnp.stack([mean_x, mean_y], -1)

    # EWA Jacobian with the 1.3 tan clamp (on J only, never on the mean).
    focal_x = width / (2.0 * camera.tan_x)
    focal_y = height / (2.0 * camera.tan_y)
    lim_x, lim_y = JACOBIAN_CLAMP * camera.tan_x, JACOBIAN_CLAMP * camera.tan_y
    ratio_x, ratio_y = tx / tz, ty / tz
    clamped_x = (ratio_x < -lim_x) | (ratio_x > lim_x)
    clamped_y = (ratio_y < -lim_y) | (ratio_y > lim_y)
    jx = _clamp(ratio_x, -lim_x, lim_x) * tz
    jy = _clamp(ratio_y, -lim_y, lim_y) * tz
    if cuda_gradient:
        jx = jnp.where(clamped_x, jax.lax.stop_gradient(jx), jx)
        jy = jnp.where(clamped_y, jax.lax.stop_gradient(jy), jy)
    zero = jnp.zeros_like(tz)
    jac = jnp.stack([
        jnp.stack([focal_x / tz, zero, -focal_x * jx / (tz * tz)], -1),
        jnp.stack([zero, focal_y / tz, -focal_y * jy / (tz * tz)], -1),
    ], -2)  # (N, 2, 3)
    t_mat = small_matmul(jac, rot_w)  # (N, 2, 3)
    sigma = covariance_3d(scales, quats)
    cov = small_matmul(small_matmul(t_mat, sigma), jnp.swapaxes(t_mat, -1, -2))
    a = cov[:, 0, 0] + COV2D_DILATION
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + COV2D_DILATION
    cov2d = jnp.stack([a, b, c], -1)

    det = a * c - b * b
    valid = in_frustum & (det != 0)
    safe_det = jnp.where(valid, det, jnp.ones_like(det))
    conics = jnp.stack([c, -b, a], -1) / safe_det[:, None]

    mid = 0.5 * (a + c)
    lambda1 = mid + jnp.sqrt(jnp.maximum(EIGEN_FLOOR, mid * mid - safe_det))
    safe_lambda = jnp.where(valid, lambda1, jnp.ones_like(lambda1))
    radius = jnp.ceil(3.0 * jnp.sqrt(jax.lax.stop_gradient(safe_lambda))).astype(jnp.int32)

    grid_x, grid_y = tiles_grid(height, width)
    rect = tile_rect(jax.lax.stop_gradient(means2d), radius, grid_x, grid_y)
    area = (rect[:, 2] - rect[:, 0]) * (rect[:, 3] - rect[:, 1])
    visible = valid & (area > 0)
    radii = jnp.where(visible, radius, 0)

    zero2 = jnp.zeros((), dtype)
    means2d = jnp.where(in_frustum[:, None], means2d, zero2)
    conics = jnp.where(valid[:, None], conics, zero2)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii, cov2d=cov2d,
                     in_frustum=in_frustum, jac_clamped=visible & (clamped_x | clamped_y))
