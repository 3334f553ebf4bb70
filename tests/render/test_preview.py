"""The CPU preview renderer (geolrm_jax.render.preview) against the splatter (geolrm_jax.render.splat) on fresh
random scenes, and its host-side tile lists against a brute-force reference."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geolrm_jax import inference
from geolrm_jax.geometry import fov_to_intrinsics, spherical_c2w
from geolrm_jax.render import preview, projection
from geolrm_jax.render.gaussians import Gaussians
from geolrm_jax.render.splat import default_capacity, render_camera

TOLERANCE = 1e-3  # |preview - splat| in [0, 1] RGB, but where a cut-off flips (see the preview module doc)
FLIP_BOUND = 1e-2  # ... where one Gaussian's weight in the pixel differs (<= 1/255 at the alpha cut-off)


def _scene(seed: int, num: int) -> Gaussians:
    """Gaussians in the unit cube with the cases the image model distinguishes: padding (opacity 0), opacities
    below 1/255, near-opaque ones (T reaches the 1e-4 stop), raw un-normalized quaternions, sizes from sub-pixel
    to many tiles, and exact depth ties (duplicated means with other colours: the order is then the index)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-0.5, 0.5, (num, 3))
    means[num - 20:] = means[:20] + 0.0  # same position as another Gaussian: equal view z in every camera
    scales = np.exp(rng.uniform(np.log(0.002), np.log(0.04), (num, 3)))
    opacities = rng.uniform(0.0, 1.0, num)
    opacities[: num // 10] = 0.0
    opacities[num // 10: num // 5] = rng.uniform(0.0, 0.006, num // 10)
    opacities[num - num // 4:] = rng.uniform(0.9, 1.0, num // 4)
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return Gaussians(f(means), f(scales), f(rng.normal(size=(num, 4)) * rng.uniform(0.5, 2.0, (num, 1))),
                     f(opacities), f(rng.uniform(0, 1, (num, 3))))


def _cameras(seed: int, num: int):
    """Cameras around the origin; the first one close enough for Gaussians to fall behind the 0.2 near plane."""
    rng = np.random.default_rng(seed)
    radius = np.concatenate([[0.6], rng.uniform(1.0, 2.2, num - 1)])
    c2w = spherical_c2w(jnp.asarray(rng.uniform(0, 360, num), jnp.float32),
                        jnp.asarray(rng.uniform(-40, 70, num), jnp.float32), jnp.asarray(radius, jnp.float32))
    K = fov_to_intrinsics(jnp.asarray(rng.uniform(30, 60, num), jnp.float32))
    return np.asarray(c2w), np.asarray(K)


@functools.partial(jax.jit, static_argnames=("height", "width", "capacity"))
def _splat(g, c2w, K, background, height, width, capacity):
    out = render_camera(*g, c2w, K, background, height, width, capacity, implementation="xla")
    return out.rgb, out.stopped_early, out.projected.in_frustum, out.overflow


def _splat_images(g, c2w, K, background, height, width):
    capacity = default_capacity(g.num, height, width) * 4
    outs = [_splat(g, jnp.asarray(c), jnp.asarray(k), background, height, width, capacity)
            for c, k in zip(c2w, K, strict=True)]
    assert all(int(o[3]) == 0 for o in outs)
    return (np.stack([np.asarray(o[0]) for o in outs]), np.stack([np.asarray(o[1]) for o in outs]),
            np.stack([np.asarray(o[2]) for o in outs]))


def _assert_close(got, want):
    """Float rounding almost everywhere; above TOLERANCE only at a cut-off flip (at most 1 pixel in 10^4, within
    FLIP_BOUND): the two programs round the projection differently (XLA fuses multiply-adds per program)."""
    diff = np.abs(got - want).max(-1)
    assert np.all(np.isfinite(got)) and diff.max() <= FLIP_BOUND, diff.max()
    assert np.sum(diff > TOLERANCE) <= diff.size // 10_000, np.sort(diff.ravel())[-5:]
    assert np.mean(diff > 1e-5) < 1e-3


def test_matches_splatter_on_random_scenes():
    """Same image as the splatter (to float rounding, see `_assert_close`) on a non-square image whose size is no
    multiple of 16, several cameras, a coloured background; the scenes hit the T < 1e-4 stop, the near plane
    and Gaussians reaching past the image border."""
    height, width, background = 40, 56, jnp.asarray([0.2, 0.5, 0.9], jnp.float32)
    g = _scene(0, 300)
    c2w, K = _cameras(1, 5)
    want, stopped, in_frustum = _splat_images(g, c2w, K, background, height, width)
    got = preview.render_preview(g, c2w, K, height, width, background)
    assert got.shape == (5, height, width, 3) and got.dtype == np.float32
    # The scene exercises the stop, pixels without it, and the near plane.
    assert 50 < stopped.sum() < 0.9 * stopped.size and (~in_frustum).sum() > 0
    assert 0.05 < np.mean(np.abs(want - np.asarray(background)))
    _assert_close(got, want)


def test_groups_and_render_views_match_splatter():
    """Cameras split into groups of one (the last padded, list capacity growing between groups) give the same
    frames; `inference.render_views` on a CPU backend is this renderer."""
    size = 32
    g = _scene(2, 300)
    c2w, K = _cameras(3, 3)
    want = _splat_images(g, c2w, K, jnp.ones(3, jnp.float32), size, size)[0]
    tiles = projection.tiles_grid(size, size)[0] ** 2
    grouped = preview.render_preview(g, c2w, K, size, size, group_items=tiles)
    _assert_close(grouped, want)
    batched = Gaussians(*(x[None] for x in g))
    views = inference.render_views(batched, c2w, K, size)
    assert jax.default_backend() == "cpu" and np.array_equal(views, grouped)


def test_nothing_visible_gives_background():
    """All Gaussians behind the camera, or transparent, or none: every pixel is the background, exactly."""
    g = _scene(4, 50)
    c2w, K = _cameras(5, 2)
    far = Gaussians(g.means + 10.0, *g[1:3], g.opacities, g.rgbs)  # beyond the cameras at distance <= 2
    far = Gaussians(far.means * jnp.asarray([1.0, 1.0, -1.0]), *far[1:])
    out = preview.render_preview(far, c2w, K, 24, 24, (0.25, 0.5, 0.75))
    transparent = preview.render_preview(Gaussians(*g[:3], g.opacities * 0.003, g.rgbs), c2w, K, 24, 24,
                                         (0.25, 0.5, 0.75))
    empty = preview.render_preview(Gaussians(*(x[:0] for x in g)), c2w, K, 24, 24, (0.25, 0.5, 0.75))
    for image in (out, transparent, empty):
        assert image.shape == (2, 24, 24, 3)
        np.testing.assert_array_equal(image, np.broadcast_to(np.float32([0.25, 0.5, 0.75]), image.shape))


@pytest.mark.parametrize("grid_x, grid_y", [(5, 4), (1024, 2048)])  # the second needs 64-bit sort keys
def test_bin_camera_matches_brute_force(grid_x, grid_y):
    """Tile lists: per tile, the Gaussians whose block range meets one of its 4 blocks, in (z, index) order, with
    the mask of the blocks met; depth ties included."""
    rng = np.random.default_rng(6)
    num = 300
    x0 = rng.integers(0, min(2 * grid_x, 12), num)
    y0 = rng.integers(0, min(2 * grid_y, 10), num)
    x1 = np.minimum(x0 + rng.integers(0, 5, num), 2 * grid_x)
    y1 = np.minimum(y0 + rng.integers(0, 5, num), 2 * grid_y)
    ranges = np.stack([x0, y0, x1, y1], -1).astype(np.int16)
    depths = rng.choice(np.float32([0.5, 0.75, 1.0, 1.5, 2.0]), num)  # many exact ties
    by_depth, entries, tile_start = preview.bin_camera(depths, ranges, grid_x, grid_y)
    drawn = sorted((i for i in range(num) if x1[i] > x0[i] and y1[i] > y0[i]), key=lambda i: (depths[i], i))
    assert by_depth.tolist() == drawn
    want = {}
    for rank, g in enumerate(drawn):
        for ty in range(y0[g] // 2, (y1[g] + 1) // 2):
            for tx in range(x0[g] // 2, (x1[g] + 1) // 2):
                mask = sum(1 << (2 * qy + qx) for qy in (0, 1) for qx in (0, 1)
                           if x0[g] <= 2 * tx + qx < x1[g] and y0[g] <= 2 * ty + qy < y1[g])
                want.setdefault(ty * grid_x + tx, []).append(rank | mask << preview.ID_BITS)
    assert tile_start.shape == (grid_x * grid_y + 1,) and tile_start[-1] == entries.size
    assert sum(len(v) for v in want.values()) == entries.size
    for tile, lst in want.items():
        assert entries[tile_start[tile]:tile_start[tile + 1]].tolist() == lst, tile
