"""Procedural compound objects, rendered on the accelerator by sphere tracing their signed distance function.

An object is a union of up to ``MAX_PARTS`` parts. A part is a primitive (sphere, rounded box, cylinder,
capsule, torus; cylinders, capsules and tori have their axis along local z) with a rigid pose, optionally
hollowed into a shell of thickness ``shell`` (``|d| - shell``) and cut by a plane in its own frame
(``max(d, n·p - offset)``): a hollow cylinder cut below its top is a cup, a hollow sphere cut above its
equator a bowl. Families (``FAMILIES``):

* ``convex``: 1-3 solid convex primitives;
* ``concave``: cups (with or without a handle), bowls, rings, arches, vases, each with extra solid parts;
* ``thin``: tables, chairs, stools, lamps, frames: plates and rods a few voxels thick.

Each part has two colours and a texture (solid, stripes, checker, gradient) in its own frame; shading is
Lambertian under two directional lights and an ambient term drawn per object in world space (view
independent, so multi-view consistent). Objects are centred and scaled so their box fits in
[-0.45, 0.45]^3 (the model's [-0.5, 0.5]^3 volume), upright with a random yaw, or (1 in 5) in a random
orientation.

Everything about object ``i`` of stream ``s`` is a function of ``SeedSequence([seed, s, i])`` (numpy), and the
images are a deterministic function of those parameters (JAX), so examples are reproducible on any device.
Rendering: ``steps`` sphere-tracing steps from the ray's entry into the bounding sphere of radius sqrt(3)/2;
``supersample``² rays per pixel give anti-aliased colour and alpha coverage; depth is the z-depth of the
nearest sub-pixel hit where at least half the sub-pixels hit (0 elsewhere); normals are the SDF gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax.data.synthetic import random_rotation

PART_KINDS = ("sphere", "box", "cylinder", "capsule", "torus")
TEXTURES = ("solid", "stripes", "checker", "gradient")
FAMILIES = ("convex", "concave", "thin")
MAX_PARTS = 8
BOUND_RADIUS = 0.87  # sqrt(3) / 2: the sphere around [-0.5, 0.5]^3
_FAR = 1e3


class Scene(NamedTuple):
    """One object (leading axis P = MAX_PARTS), or a batch of them (leading axes (B, P)).

    valid (P,) bool; kind (P,) int32 index into PART_KINDS; center (P, 3); rotation (P, 3, 3) local -> world;
    size (P, 3): sphere (r, -, -), box half extents, cylinder / capsule (r, half height, -), torus (R, r, -);
    rounding (P,) box edge radius; shell (P,) wall thickness (0 = solid); cut (P, 4) plane (n, offset) in the
    local frame, the part keeps n·p <= offset; has_cut (P,) bool; colors (P, 2, 3) in [0, 1]; texture (P,)
    int32 index into TEXTURES; frequency (P,) texture cycles per unit length; light_dirs (2, 3) unit vectors
    towards the lights; light_weights (2,); ambient ().
    """

    valid: np.ndarray
    kind: np.ndarray
    center: np.ndarray
    rotation: np.ndarray
    size: np.ndarray
    rounding: np.ndarray
    shell: np.ndarray
    cut: np.ndarray
    has_cut: np.ndarray
    colors: np.ndarray
    texture: np.ndarray
    frequency: np.ndarray
    light_dirs: np.ndarray
    light_weights: np.ndarray
    ambient: np.ndarray


# ---------------------------------------------------------------------------------------------------------
# Object sampling (numpy)


class _Part(NamedTuple):
    kind: str
    center: np.ndarray
    rotation: np.ndarray
    size: tuple
    rounding: float = 0.0
    shell: float = 0.0
    cut: tuple | None = None


def _rot_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _part(kind, center, size, rotation=None, **kw) -> _Part:
    rot = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    return _Part(kind, np.asarray(center, np.float64), rot, tuple(float(s) for s in size) + (0.0,) * (3 - len(size)),
                 **kw)


def _convex_part(rng, center=(0, 0, 0), scale=1.0) -> _Part:
    kind = ("sphere", "box", "cylinder", "capsule")[rng.integers(4)]
    rot = random_rotation(rng)
    if kind == "sphere":
        return _part(kind, center, (scale * rng.uniform(0.2, 0.4),), rot)
    if kind == "box":
        half = scale * rng.uniform(0.1, 0.35, 3)
        return _part(kind, center, half, rot, rounding=float(rng.uniform(0, 0.5) * half.min()))
    if kind == "cylinder":
        return _part(kind, center, (scale * rng.uniform(0.1, 0.3), scale * rng.uniform(0.1, 0.35)), rot)
    return _part(kind, center, (scale * rng.uniform(0.08, 0.2), scale * rng.uniform(0.1, 0.3)), rot)


def _convex(rng):
    parts = [_convex_part(rng)]
    for _ in range(rng.integers(0, 3)):
        parts.append(_convex_part(rng, rng.uniform(-0.25, 0.25, 3), 0.7))
    return parts


def _cup(rng):
    r, h, t = rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.35), rng.uniform(0.015, 0.04)
    parts = [_part("cylinder", (0, 0, 0), (r, h), shell=t, cut=(0.0, 0.0, 1.0, h - 1.5 * t))]
    if rng.random() < 0.6:  # handle: half a torus on the side, its axis horizontal
        big = rng.uniform(0.35, 0.6) * h
        parts.append(_part("torus", (r - 0.5 * t, 0, 0), (big, rng.uniform(0.015, 0.035)), _rot_x(np.pi / 2),
                           cut=(-1.0, 0.0, 0.0, 0.0)))  # keeps the half with local x >= 0, outside the wall
    return parts


def _bowl(rng):
    r, t = rng.uniform(0.25, 0.45), rng.uniform(0.015, 0.04)
    cut_height = rng.uniform(-0.1, 0.35) * r
    parts = [_part("sphere", (0, 0, 0), (r,), shell=t, cut=(0.0, 0.0, 1.0, cut_height))]
    if rng.random() < 0.5:  # a foot
        parts.append(_part("cylinder", (0, 0, -r + 0.02), (0.4 * r, 0.03)))
    return parts


def _ring(rng):
    big = rng.uniform(0.2, 0.35)
    rot = _rot_x(rng.uniform(0, np.pi / 2))
    parts = [_part("torus", (0, 0, 0), (big, rng.uniform(0.03, 0.1)), rot)]
    if rng.random() < 0.5:  # a stand or a gem
        parts.append(_convex_part(rng, rng.uniform(-0.1, 0.1, 3), 0.5))
    return parts


def _arch(rng):
    w, h, d = rng.uniform(0.25, 0.4), rng.uniform(0.2, 0.4), rng.uniform(0.05, 0.15)
    leg = rng.uniform(0.04, 0.1)
    return [_part("box", (-w + leg, 0, 0), (leg, d, h)), _part("box", (w - leg, 0, 0), (leg, d, h)),
            _part("box", (0, 0, h - leg), (w, d, leg))]


def _vase(rng):
    r, h, t = rng.uniform(0.12, 0.25), rng.uniform(0.2, 0.35), rng.uniform(0.015, 0.035)
    return [_part("capsule", (0, 0, 0), (r, h), shell=t, cut=(0.0, 0.0, 1.0, h + 0.5 * r)),
            _part("torus", (0, 0, h + 0.5 * r), (np.sqrt(max(r * r - (0.5 * r) ** 2, 1e-4)), t))]


def _concave(rng):
    parts = [_cup, _bowl, _ring, _arch, _vase][rng.integers(5)](rng)
    if rng.random() < 0.3:
        parts.append(_convex_part(rng, rng.uniform(-0.35, 0.35, 3), 0.5))
    return parts


def _legs(rng, n, spread, height, radius, z_top):
    angle0 = rng.uniform(0, 2 * np.pi)
    return [_part("cylinder", (spread * np.cos(a), spread * np.sin(a), z_top - height), (radius, height))
            for a in angle0 + 2 * np.pi * np.arange(n) / n]


def _table(rng):
    top_half = (rng.uniform(0.25, 0.45), rng.uniform(0.2, 0.45), rng.uniform(0.015, 0.04))
    height = rng.uniform(0.15, 0.35)
    leg_r = rng.uniform(0.015, 0.04)
    parts = [_part("box", (0, 0, height), top_half, rounding=0.3 * top_half[2])]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_part("cylinder", (sx * (top_half[0] - 2 * leg_r), sy * (top_half[1] - 2 * leg_r), 0.0),
                               (leg_r, height)))
    return parts


def _chair(rng):
    parts = _table(rng)
    top = parts[0]
    hx, hy, hz = top.size
    back_h = rng.uniform(0.15, 0.35)
    parts.append(_part("box", (0, hy - hz, top.center[2] + back_h), (hx, hz, back_h)))
    return parts


def _stool(rng):
    r, height = rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.35)
    seat = _part("cylinder", (0, 0, height), (r, rng.uniform(0.015, 0.04)))
    return [seat] + _legs(rng, int(rng.integers(3, 5)), 0.7 * r, height, rng.uniform(0.015, 0.035), height)


def _lamp(rng):
    base_r, stem_h = rng.uniform(0.1, 0.2), rng.uniform(0.2, 0.35)
    shade_r, shade_h, t = rng.uniform(0.12, 0.25), rng.uniform(0.07, 0.15), rng.uniform(0.01, 0.025)
    return [_part("cylinder", (0, 0, -stem_h), (base_r, 0.02)),
            _part("cylinder", (0, 0, 0), (rng.uniform(0.01, 0.025), stem_h)),
            _part("cylinder", (0, 0, stem_h), (shade_r, shade_h), shell=t,
                  cut=(0.0, 0.0, 1.0, shade_h - 1.5 * t))]


def _frame(rng):
    w, h, r = rng.uniform(0.25, 0.4), rng.uniform(0.25, 0.4), rng.uniform(0.012, 0.03)
    rungs = int(rng.integers(0, 4))
    vertical = lambda x: _part("cylinder", (x, 0, 0), (r, h))
    horizontal = lambda z: _part("cylinder", (0, 0, z), (r, w), _rot_y(np.pi / 2))
    return [vertical(-w), vertical(w), horizontal(-h), horizontal(h)] + [
        horizontal(z) for z in np.linspace(-h, h, rungs + 2)[1:-1]]


def _thin(rng):
    return [_table, _chair, _stool, _lamp, _frame][rng.integers(5)](rng)


_SAMPLERS = {"convex": _convex, "concave": _concave, "thin": _thin}


def _local_box(p: _Part) -> np.ndarray:
    s = p.size
    half = {"sphere": (s[0],) * 3, "box": s, "cylinder": (s[0], s[0], s[1]),
            "capsule": (s[0], s[0], s[1] + s[0]), "torus": (s[0] + s[1], s[0] + s[1], s[1])}[p.kind]
    return np.asarray(half, np.float64)


def _world_bounds(parts) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
    points = np.concatenate([(corners * _local_box(p)) @ p.rotation.T + p.center for p in parts])
    return points.min(0), points.max(0)


def sample_object(rng: np.random.Generator, family: str | None = None) -> tuple[Scene, str]:
    """A random object of ``family`` (random when None) -> (Scene with P = MAX_PARTS, family)."""
    family = FAMILIES[rng.integers(len(FAMILIES))] if family is None else family
    parts = _SAMPLERS[family](rng)[:MAX_PARTS]
    # Pose the whole object, then centre and scale its box into [-extent, extent]^3.
    pose = random_rotation(rng) if rng.random() < 0.2 else _rot_z(rng.uniform(0, 2 * np.pi))
    parts = [p._replace(center=pose @ p.center, rotation=pose @ p.rotation) for p in parts]
    lo, hi = _world_bounds(parts)
    scale = rng.uniform(0.35, 0.45) / (0.5 * (hi - lo).max())
    mid = 0.5 * (lo + hi)
    n = len(parts)
    pad = MAX_PARTS - n
    padn = lambda x, fill=0.0: np.concatenate([np.asarray(x, np.float32),
                                               np.full((pad,) + np.shape(x)[1:], fill, np.float32)])
    cut = [(p.cut[:3] + (p.cut[3] * scale,)) if p.cut else (0.0, 0.0, 1.0, 0.0) for p in parts]
    colors = rng.uniform(0.1, 1.0, (n, 2, 3))
    if rng.random() < 0.5:  # one colour scheme for the whole object, as many real objects have
        colors[:] = colors[0]
    texture = rng.integers(len(TEXTURES), size=n)
    light_dirs = rng.normal(size=(2, 3)) + np.array([0.0, 0.0, 1.0])
    light_dirs /= np.linalg.norm(light_dirs, axis=-1, keepdims=True)
    weight = rng.uniform(0.45, 0.7)
    scene = Scene(
        valid=np.arange(MAX_PARTS) < n,
        kind=np.concatenate([[PART_KINDS.index(p.kind) for p in parts], np.zeros(pad)]).astype(np.int32),
        center=padn([(p.center - mid) * scale for p in parts]),
        rotation=np.concatenate([np.stack([p.rotation for p in parts]), np.tile(np.eye(3), (pad, 1, 1))]
                                ).astype(np.float32),
        size=padn([np.asarray(p.size) * scale for p in parts], 0.1),
        rounding=padn([p.rounding * scale for p in parts]),
        shell=padn([p.shell * scale for p in parts]),
        cut=padn(cut),
        has_cut=np.concatenate([[p.cut is not None for p in parts], np.zeros(pad, bool)]),
        colors=padn(colors),
        texture=np.concatenate([texture, np.zeros(pad)]).astype(np.int32),
        frequency=padn(rng.uniform(3.0, 10.0, n) / scale),
        light_dirs=light_dirs.astype(np.float32),
        light_weights=np.array([weight, rng.uniform(0.1, 0.3)], np.float32),
        ambient=np.float32(rng.uniform(0.3, 0.5)),
    )
    return scene, family


def stack_scenes(scenes) -> Scene:
    return Scene(*[np.stack(fields) for fields in zip(*scenes, strict=True)])


# ---------------------------------------------------------------------------------------------------------
# Signed distance and rendering (JAX)


def _length(v, axis=-1):
    return jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=axis), 1e-20))


def part_distances(scene: Scene, points) -> tuple[jnp.ndarray, jnp.ndarray]:
    """points (N, 3) world -> (distances (N, P) of each part, local points (N, P, 3)). Invalid parts: +far."""
    # R^T (x - c) and the plane test as sums of products, not contractions: XLA then fuses the whole distance
    # into one elementwise kernel per tracing step instead of launching tiny matrix products.
    diff = points[:, None, :] - scene.center
    local = sum(diff[..., j : j + 1] * scene.rotation[:, j, :] for j in range(3))
    s = scene.size
    radial = _length(local[..., :2])
    sphere = _length(local) - s[:, 0]
    q = jnp.abs(local) - (s - scene.rounding[:, None])
    box = _length(jnp.maximum(q, 0.0)) + jnp.minimum(q.max(-1), 0.0) - scene.rounding
    dc = jnp.stack([radial - s[:, 0], jnp.abs(local[..., 2]) - s[:, 1]], -1)
    cylinder = jnp.minimum(dc.max(-1), 0.0) + _length(jnp.maximum(dc, 0.0))
    axial = local[..., 2] - jnp.clip(local[..., 2], -s[:, 1], s[:, 1])
    capsule = jnp.sqrt(radial**2 + axial**2) - s[:, 0]
    torus = jnp.sqrt((radial - s[:, 0]) ** 2 + local[..., 2] ** 2) - s[:, 1]
    d = jnp.choose(scene.kind, [sphere, box, cylinder, capsule, torus], mode="clip")
    d = jnp.where(scene.shell > 0, jnp.abs(d) - scene.shell, d)
    plane = sum(local[..., i] * scene.cut[:, i] for i in range(3)) - scene.cut[:, 3]
    d = jnp.where(scene.has_cut, jnp.maximum(d, plane), d)
    return jnp.where(scene.valid, d, _FAR), local


def sdf(scene: Scene, points) -> jnp.ndarray:
    """Signed distance (N,) of the union of the parts (a lower bound where parts are cut)."""
    return part_distances(scene, points)[0].min(-1)


def _normals(scene, points, h=1e-3):
    k = jnp.asarray([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], jnp.float32)
    n = sum(sdf(scene, points + h * kk)[:, None] * kk for kk in k)
    return n / _length(n)[..., None]


def _albedo(scene, part, local):
    """Texture colour (N, 3) of part index (N,) at its local points (N, P, 3)."""
    p = jnp.take_along_axis(local, part[:, None, None], 1)[:, 0]
    f = scene.frequency[part][:, None]
    stripes = jnp.sin(2 * jnp.pi * f[:, 0] * p[:, 2]) > 0
    checker = (jnp.floor(f * p).sum(-1).astype(jnp.int32) % 2) == 0
    blend = jnp.clip(p[:, 2] * f[:, 0] / 10.0 + 0.5, 0.0, 1.0)
    tex = scene.texture[part]
    mix = jnp.where(tex == 0, 0.0, jnp.where(tex == 1, stripes, jnp.where(tex == 2, checker, blend)))
    colors = scene.colors[part]
    return colors[:, 0] * (1 - mix[:, None]) + colors[:, 1] * mix[:, None]


def trace(scene: Scene, origins, directions, steps: int = 96, hit_eps: float = 1e-3):
    """Sphere-trace unit-direction rays (N, 3) -> (t (N,), hit (N,) bool)."""
    b = jnp.sum(origins * directions, -1)
    c = jnp.sum(origins * origins, -1) - BOUND_RADIUS**2
    disc = b * b - c
    inside = disc > 0
    root = jnp.sqrt(jnp.maximum(disc, 0.0))
    t0, t1 = jnp.maximum(-b - root, 0.0), -b + root

    def body(_, t):
        d = sdf(scene, origins + t[:, None] * directions)
        return jnp.minimum(t + d, t1 + 1.0)

    t = jax.lax.fori_loop(0, steps, body, t0)
    d = sdf(scene, origins + t[:, None] * directions)
    return t, inside & (t <= t1) & (jnp.abs(d) < hit_eps)


def shade(scene: Scene, points):
    """Lambertian colour (N, 3) and normals (N, 3) at surface points (N, 3)."""
    dist, local = part_distances(scene, points)
    part = jnp.argmin(dist, -1)
    normals = _normals(scene, points)
    light = sum(jnp.maximum(jnp.sum(normals * scene.light_dirs[i], -1), 0.0) * scene.light_weights[i]
                for i in range(scene.light_dirs.shape[0]))
    color = _albedo(scene, part, local) * (scene.ambient + light)[:, None]
    return jnp.clip(color, 0.0, 1.0), normals


def render_views(scene: Scene, c2w, K, size: int, supersample: int = 2, steps: int = 96):
    """One object in V views -> rgba (V, size, size, 4) float32 (straight alpha), z-depth (V, size, size)
    (0 = background), normals (V, size, size, 3) (world, unit; 0 = background)."""
    from geolrm_jax import geometry

    s = size * supersample
    rays = geometry.pixel_rays(c2w, K, s, s)
    d = rays.directions.reshape(-1, 3)
    norm = _length(d)
    origins = rays.origins.reshape(-1, 3)
    t, hit = trace(scene, origins, d / norm[:, None], steps)
    points = origins + t[:, None] * d / norm[:, None]
    color, normals = shade(scene, points)
    v = c2w.shape[0]
    grid = lambda x: x.reshape(v, size, supersample, size, supersample, -1)
    cover = grid(hit.astype(jnp.float32)).mean((2, 4))[..., 0]
    premult = grid(color * hit[:, None]).mean((2, 4))
    rgb = premult / jnp.maximum(cover, 1e-6)[..., None]
    zdepth = jnp.where(hit, t / norm, jnp.inf)
    depth = grid(zdepth).min((2, 4))[..., 0]
    depth = jnp.where((cover >= 0.5) & jnp.isfinite(depth), depth, 0.0)
    nsum = grid(normals * hit[:, None]).sum((2, 4))
    nrm = jnp.where((cover >= 0.5)[..., None], nsum / _length(nsum)[..., None], 0.0)
    return jnp.concatenate([rgb, cover[..., None]], -1), depth, nrm


def occupancy(scene: Scene, grid_size: int) -> jnp.ndarray:
    """(G, G, G) uint8 indexed [x, y, z] over [-0.5, 0.5]^3: voxels the surface passes through (|SDF| at the
    voxel centre at most half the voxel diagonal)."""
    axis = (jnp.arange(grid_size, dtype=jnp.float32) + 0.5) / grid_size - 0.5
    points = jnp.stack(jnp.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    d = sdf(scene, points)
    return (jnp.abs(d) <= 0.5 * np.sqrt(3.0) / grid_size).reshape((grid_size,) * 3).astype(jnp.uint8)
