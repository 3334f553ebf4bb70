"""High-level differentiable Gaussian splatting: `render` (jittable) and `render_with_retry` (host side).

Pipeline per camera (each stage its own module):
  projection.project_gaussians -> tiles.intersect_tiles (one sort, static capacity, overflow count)
  -> rasterize.rasterize (Pallas Triton kernels on GPU, pure JAX on CPU/TPU; every JAX transform applies)
  -> rgb = clamp(C + T bg, 0, 1) with a clamp whose derivative is 1 inside, as torch.clamp.
Batched with vmap over scenes (B); per scene, projection and rasterization are vmapped over the cameras (C) and
the tile intersection is lax.map-ped over them (its sorts then stay 1-D per scene, which XLA can run as CUB radix
sorts on GPU).
Math: ../shared/fixtures/splat_small/README.md, i.e. the rasterizer GeoLRM calls (3DGS
diff-gaussian-rasterization, ashawkey's depth/alpha fork).

Gradients flow to all `Gaussians` fields and to c2w. gradient="exact" (default) is the exact derivative of the
forward; gradient="cuda" reproduces the original CUDA backward (straight-through 0.99 alpha clamp, and the
clamped EWA Jacobian entries treated as constants).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from geolrm_kernels import rasterize

from geolrm_jax.render import projection, tiles
from geolrm_jax.render.gaussians import Gaussians, validate_gaussians


class RenderOutput(NamedTuple):
    rgb: jnp.ndarray  # (B, C, H, W, 3) clamped to [0, 1]
    alpha: jnp.ndarray  # (B, C, H, W) sum of alpha T
    depth: jnp.ndarray  # (B, C, H, W) sum of alpha T z (unnormalized, no background term)
    overflow: jnp.ndarray  # () int32, the largest per-camera count of dropped tile intersections


class CameraRender(NamedTuple):
    """Everything about one camera's render, for tests and debugging (all unbatched)."""

    rgb: jnp.ndarray  # (H, W, 3)
    rgb_unclamped: jnp.ndarray  # (H, W, 3)
    alpha: jnp.ndarray  # (H, W)
    depth: jnp.ndarray  # (H, W)
    n_blended: jnp.ndarray  # (H, W) int32
    stopped_early: jnp.ndarray  # (H, W) bool
    projected: projection.Projected
    overflow: jnp.ndarray  # () int32
    num_intersections: jnp.ndarray  # () int32


def default_capacity(num_gaussians: int, height: int, width: int) -> int:
    """A first guess for the tile-intersection capacity: 8 tiles per Gaussian, at least 4096."""
    grid_x, grid_y = projection.tiles_grid(height, width)
    return int(max(4096, min(8 * num_gaussians, num_gaussians * grid_x * grid_y)))


def _clamp01(x):
    return jnp.where(x < 0, 0.0, jnp.where(x > 1, 1.0, x)).astype(x.dtype)


def render_camera(means, scales, quats, opacities, rgbs, c2w, K, background, height: int, width: int,
                  capacity: int, *, gradient: str = "exact", implementation: str | None = None) -> CameraRender:
    """Render N Gaussians (unbatched fields) into one camera: c2w (4, 4), K (3, 3), background (3,)."""
    if gradient not in ("exact", "cuda"):
        raise ValueError(f"gradient must be 'exact' or 'cuda', got {gradient!r}")
    cuda = gradient == "cuda"
    camera = projection.camera_from_c2w(c2w, K)
    proj = projection.project_gaussians(means, scales, quats, camera, height, width, cuda_gradient=cuda)
    lists = tiles.intersect_tiles(proj.means2d, proj.radii, proj.depths, height, width, capacity)
    feats = rasterize.pack_features(proj.means2d, proj.conics, opacities, rgbs, proj.depths)
    out = rasterize.rasterize(feats, lists.gaussian_ids, lists.tile_start, lists.tile_end, height, width,
                              cuda_gradient=cuda, implementation=implementation)
    image = functools.partial(rasterize.tiles_to_image, height=height, width=width)
    unclamped = image(out.color) + image(out.transmittance)[..., None] * background
    return CameraRender(rgb=_clamp01(unclamped), rgb_unclamped=unclamped, alpha=image(out.weight),
                        depth=image(out.depth), n_blended=image(out.count), stopped_early=image(out.stopped),
                        projected=proj, overflow=lists.overflow, num_intersections=lists.num_intersections)


def render(gaussians: Gaussians, c2w, K, height: int, width: int, background, *, capacity: int | None = None,
           gradient: str = "exact", implementation: str | None = None,
           raster_config: rasterize.RasterizeConfig | None = None) -> RenderOutput:
    """Render B scenes into C cameras each.

    gaussians: fields (B, N, ...) (see `Gaussians`); c2w (B, C, 4, 4) OpenGL; K (B, C, 3, 3) normalized (only
    K[1, 1] is used); background (B, 3) or (3,). height, width, capacity are static. capacity is the number of
    tile-Gaussian intersections per camera (default `default_capacity`); intersections past it are dropped and
    counted in `overflow` (check it, or use `render_with_retry`). raster_config: the Pallas rasterizer's tuning
    (speed only; default `geolrm_kernels.rasterize.DEFAULT_CONFIG`).
    Returns `RenderOutput` with rgb (B, C, H, W, 3), alpha and depth (B, C, H, W), overflow ().
    """
    validate_gaussians(gaussians)
    if gaussians.means.ndim != 3:
        raise ValueError(f"Gaussians.means must be (B, N, 3), got {gaussians.means.shape}")
    num_scenes, num = gaussians.means.shape[:2]
    if c2w.shape[-2:] != (4, 4) or c2w.ndim != 4 or c2w.shape[0] != num_scenes:
        raise ValueError(f"c2w must be (B={num_scenes}, C, 4, 4), got {c2w.shape}")
    if K.shape != c2w.shape[:2] + (3, 3):
        raise ValueError(f"K must be {c2w.shape[:2] + (3, 3)}, got {K.shape}")
    background = jnp.broadcast_to(jnp.asarray(background, gaussians.means.dtype), (num_scenes, 3))
    capacity = capacity or default_capacity(num, height, width)
    if gradient not in ("exact", "cuda"):
        raise ValueError(f"gradient must be 'exact' or 'cuda', got {gradient!r}")
    cuda = gradient == "cuda"

    # The stages of `render_camera`, per scene: projection and rasterization vmapped over the cameras, the tile
    # intersection mapped sequentially over them, so that each of its sorts stays 1-D for a single scene (XLA can
    # give a 1-D sort to CUB's radix sort on GPU; a sort batched over cameras would be a comparison sort). Scenes
    # are vmapped (their axis is the one a data-parallel mesh splits; per device it is usually 1).
    def one_scene(g, bg, cws, ks):
        def project(cw, k):
            camera = projection.camera_from_c2w(cw, k)
            return projection.project_gaussians(g[0], g[1], g[2], camera, height, width, cuda_gradient=cuda)

        proj = jax.vmap(project)(cws, ks)
        lists = jax.lax.map(
            lambda p: tiles.intersect_tiles(p[0], p[1], p[2], height, width, capacity),
            (jax.lax.stop_gradient(proj.means2d), proj.radii, jax.lax.stop_gradient(proj.depths)))

        def raster(p, ids, start, end):
            feats = rasterize.pack_features(p.means2d, p.conics, g[3], g[4], p.depths)
            out = rasterize.rasterize(feats, ids, start, end, height, width, cuda_gradient=cuda,
                                      implementation=implementation, config=raster_config)
            image = functools.partial(rasterize.tiles_to_image, height=height, width=width)
            rgb = _clamp01(image(out.color) + image(out.transmittance)[..., None] * bg)
            return rgb, image(out.weight), image(out.depth)

        rgb, alpha, depth = jax.vmap(raster)(proj, lists.gaussian_ids, lists.tile_start, lists.tile_end)
        return rgb, alpha, depth, jnp.max(lists.overflow)

    rgb, alpha, depth, overflow = jax.vmap(one_scene)(tuple(gaussians), background, c2w, K)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, overflow=jnp.max(overflow))


def grown_capacity(capacity: int, overflow: int, max_capacity: int = 1 << 28) -> int:
    """The capacity to retry a render with after ``overflow`` intersections did not fit ``capacity``: the next
    power of two of what is needed (so that retries, each a new compilation, grow geometrically). Raises
    RuntimeError past ``max_capacity``."""
    needed = capacity + overflow
    grown = int(2 ** int(np.ceil(np.log2(needed))))
    if grown > max_capacity:
        raise RuntimeError(f"{needed} tile intersections exceed max_capacity {max_capacity}")
    return grown


def render_with_retry(gaussians: Gaussians, c2w, K, height: int, width: int, background, *,
                      capacity: int | None = None, max_capacity: int = 1 << 28, **kwargs) -> RenderOutput:
    """Host-side `render` that grows the capacity (next power of two of what is needed) until nothing overflows.

    Each new capacity compiles a new program, so the growth is geometric. Raises RuntimeError past
    max_capacity. kwargs go to `render` (gradient, implementation).
    """
    capacity = capacity or default_capacity(gaussians.means.shape[-2], height, width)
    while True:
        out = _render_jit(gaussians, c2w, K, height, width, background, capacity=capacity, **kwargs)
        overflow = int(out.overflow)
        if overflow == 0:
            return out
        capacity = grown_capacity(capacity, overflow, max_capacity)


_render_jit = jax.jit(render, static_argnames=("height", "width", "capacity", "gradient", "implementation"))
