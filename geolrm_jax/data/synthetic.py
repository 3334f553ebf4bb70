"""Procedural objects (unions of SDF primitives) rendered exactly by analytic ray casting.

Objects are unions of 1-5 primitives (sphere, box, torus, cylinder, capsule) with random size, position and
rotation, each inside [-0.5, 0.5]^3 (its bounding sphere is), with a random colour pair and texture (solid,
stripes, checker in the primitive's frame). Each camera ray is intersected in closed form with every
primitive (quadratics; slabs for boxes; the torus quartic through companion-matrix eigenvalues refined by
Newton steps) and the nearest hit wins, so depth and normals are exact. Shading is Lambertian under two fixed
world-space lights (view independent, so multi-view consistent). Depth, normals and colour come from the
pixel-centre ray; pixels at silhouettes and primitive boundaries are supersampled ``ss x ss`` for their colour
and alpha coverage (anti-aliased edges).

Camera layout (documented choice, modelled on GObjaverse's 40 views): views 0..23 are an orbit, 15 degrees
apart in azimuth from a random start, at one elevation drawn per object from U[5, 30] degrees, radius 1.6;
views 24..39 are random: azimuth U[0, 360), elevation U[-10, 50] degrees, radius U[1.6, 2.0]. All views look at
the origin with a z-up world and a 49.13 degree field of view (the "x_fov": 0.8575 rad of GObjaverse's
renders). The views the pipeline picks as inputs (k, k + 6, k + 12, k + 18) are thus 90 degrees apart.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from geolrm_jax import geometry
from geolrm_jax.data import gobjaverse_io

KINDS = ("sphere", "box", "torus", "cylinder", "capsule")
TEXTURES = ("solid", "stripes", "checker")
FOV_DEG = 49.13
ORBIT_RADIUS = 1.6
_LIGHTS = np.array([[0.4, 0.3, 0.866], [-0.5, -0.6, -0.3]])
_LIGHTS /= np.linalg.norm(_LIGHTS, axis=-1, keepdims=True)
_LIGHT_WEIGHTS = np.array([0.6, 0.25])
_AMBIENT = 0.3
_EPS = 1e-6


class Primitive(NamedTuple):
    """kind: index into KINDS; center (3,); rotation (3, 3) local -> world; params (3,): sphere (r, -, -),
    box half extents, torus (R, r, -), cylinder/capsule (r, half height, -); colors (2, 3) in [0, 1];
    texture: index into TEXTURES; frequency: texture cycles per unit length."""

    kind: int
    center: np.ndarray
    rotation: np.ndarray
    params: np.ndarray
    colors: np.ndarray
    texture: int
    frequency: float


def bounding_radius(kind: int, params) -> float:
    r = {
        "sphere": lambda p: p[0],
        "box": lambda p: float(np.linalg.norm(p)),
        "torus": lambda p: p[0] + p[1],
        "cylinder": lambda p: float(np.hypot(p[0], p[1])),
        "capsule": lambda p: p[0] + p[1],
    }[KINDS[kind]]
    return float(r(np.asarray(params, np.float64)))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_primitive(rng: np.random.Generator) -> Primitive:
    kind = int(rng.integers(len(KINDS)))
    name = KINDS[kind]
    if name == "sphere":
        params = [rng.uniform(0.15, 0.35), 0.0, 0.0]
    elif name == "box":
        params = list(rng.uniform(0.1, 0.28, size=3))
    elif name == "torus":
        big = rng.uniform(0.12, 0.25)
        params = [big, rng.uniform(0.04, min(0.1, 0.6 * big)), 0.0]
    elif name == "cylinder":
        params = [rng.uniform(0.06, 0.2), rng.uniform(0.08, 0.25), 0.0]
    else:
        params = [rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.2), 0.0]
    params = np.asarray(params, np.float64)
    b = bounding_radius(kind, params)
    center = rng.uniform(-0.5 + b, 0.5 - b, size=3)
    colors = rng.uniform(0.1, 1.0, size=(2, 3))
    return Primitive(kind, center, random_rotation(rng), params, colors, int(rng.integers(len(TEXTURES))),
                     float(rng.uniform(4.0, 12.0)))


def random_object(rng: np.random.Generator, max_primitives: int = 5) -> list[Primitive]:
    return [random_primitive(rng) for _ in range(int(rng.integers(1, max_primitives + 1)))]


def object_to_json(prims: list[Primitive]) -> list[dict]:
    return [
        {"kind": KINDS[p.kind], "center": p.center.tolist(), "rotation": p.rotation.tolist(),
         "params": p.params.tolist(), "colors": p.colors.tolist(), "texture": TEXTURES[p.texture],
         "frequency": p.frequency}
        for p in prims
    ]


def object_from_json(items: list[dict]) -> list[Primitive]:
    return [
        Primitive(KINDS.index(d["kind"]), np.asarray(d["center"]), np.asarray(d["rotation"]),
                  np.asarray(d["params"]), np.asarray(d["colors"]), TEXTURES.index(d["texture"]),
                  float(d["frequency"]))
        for d in items
    ]


# ---------------------------------------------------------------------------------------------------------
# Signed distances (used by tests and to check the ray caster) and ray intersections in the local frame.


def sdf(prims: list[Primitive], points: np.ndarray) -> np.ndarray:
    """Signed distance (N,) of the union at world points (N, 3)."""
    out = np.full(points.shape[0], np.inf)
    for p in prims:
        q = (points - p.center) @ p.rotation  # world -> local
        a, b, _ = p.params
        name = KINDS[p.kind]
        if name == "sphere":
            d = np.linalg.norm(q, axis=-1) - a
        elif name == "box":
            e = np.abs(q) - p.params
            d = np.linalg.norm(np.maximum(e, 0), axis=-1) + np.minimum(e.max(-1), 0)
        elif name == "torus":
            d = np.hypot(np.hypot(q[:, 0], q[:, 1]) - a, q[:, 2]) - b
        elif name == "cylinder":
            e = np.stack([np.hypot(q[:, 0], q[:, 1]) - a, np.abs(q[:, 2]) - b], -1)
            d = np.linalg.norm(np.maximum(e, 0), axis=-1) + np.minimum(e.max(-1), 0)
        else:
            seg = np.stack([np.zeros_like(q[:, 0]), np.zeros_like(q[:, 0]), np.clip(q[:, 2], -b, b)], -1)
            d = np.linalg.norm(q - seg, axis=-1) - a
        out = np.minimum(out, d)
    return out


def _nearest_root(a, b, c):
    """Smaller root of a t^2 + 2 b t + c (inf where none)."""
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where(disc >= 0, t, np.inf)


def _valid(t, ok):
    return np.where(ok & (t > _EPS) & np.isfinite(t), t, np.inf)


def _dot(a, b):
    return np.einsum("ni,ni->n", a, b)


def _hit_sphere(o, d, r, center=(0.0, 0.0, 0.0)):
    oc = o - np.asarray(center)
    t = _nearest_root(np.ones(o.shape[0]), _dot(oc, d), _dot(oc, oc) - r * r)
    return _valid(t, np.ones_like(t, bool))


def _intersect(kind: str, params, o, d):
    """Nearest positive hit distance t (N,) (inf = miss) and local normal (N, 3) of a local-frame primitive."""
    a, b, _ = params
    normal = np.zeros_like(o)
    if kind == "sphere":
        t = _hit_sphere(o, d, a)
        p = o + t[:, None] * d
        normal = p / a
    elif kind == "box":
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-params - o) / d, (params - o) / d
            tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
        tn, tf = np.nan_to_num(tn, nan=-np.inf), np.nan_to_num(tf, nan=np.inf)
        tnear, tfar = tn.max(-1), tf.min(-1)
        t = _valid(tnear, tnear <= tfar)
        axis = tn.argmax(-1)
        normal[np.arange(o.shape[0]), axis] = -np.sign(d[np.arange(o.shape[0]), axis])
    elif kind in ("cylinder", "capsule"):
        side = _nearest_root(d[:, 0] ** 2 + d[:, 1] ** 2, o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1],
                             o[:, 0] ** 2 + o[:, 1] ** 2 - a * a)
        side = _valid(side, np.abs(o[:, 2] + side * d[:, 2]) <= b)
        if kind == "cylinder":
            caps = []
            for z in (-b, b):
                with np.errstate(divide="ignore", invalid="ignore"):
                    tc = (z - o[:, 2]) / d[:, 2]
                pc = o + np.nan_to_num(tc, posinf=0, neginf=0)[:, None] * d
                caps.append(_valid(tc, pc[:, 0] ** 2 + pc[:, 1] ** 2 <= a * a))
            t = np.minimum(side, np.minimum(*caps))
            p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
            on_side = t == side
            normal = np.where(on_side[:, None], np.stack([p[:, 0], p[:, 1], 0 * p[:, 2]], -1) / a,
                              np.stack([0 * p[:, 0], 0 * p[:, 0], np.sign(p[:, 2])], -1))
        else:
            t = np.minimum(side, np.minimum(_hit_sphere(o, d, a, (0, 0, -b)), _hit_sphere(o, d, a, (0, 0, b))))
            p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
            axis_point = np.stack([0 * p[:, 0], 0 * p[:, 0], np.clip(p[:, 2], -b, b)], -1)
            normal = (p - axis_point) / a
    elif kind == "torus":
        t = np.full(o.shape[0], np.inf)
        cand = np.isfinite(_hit_sphere(o, d, a + b))
        if cand.any():
            t[cand] = _torus_hit(o[cand], d[cand], a, b)
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        rho = np.maximum(np.hypot(p[:, 0], p[:, 1]), 1e-12)
        ring = np.stack([a * p[:, 0] / rho, a * p[:, 1] / rho, 0 * rho], -1)
        normal = (p - ring) / b
    else:
        raise ValueError(f"unknown primitive kind {kind!r}")
    return t, normal


def _torus_hit(o, d, big, small):
    """Nearest hit of unit-direction rays with a z-axis torus: real roots of the quartic, Newton-refined."""
    n = np.sum(o * d, -1)
    q = np.sum(o * o, -1) + big * big - small * small
    c3 = 4 * n
    c2 = 4 * n * n + 2 * q - 4 * big * big * (d[:, 0] ** 2 + d[:, 1] ** 2)
    c1 = 4 * n * q - 8 * big * big * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c0 = q * q - 4 * big * big * (o[:, 0] ** 2 + o[:, 1] ** 2)
    comp = np.zeros((o.shape[0], 4, 4))
    comp[:, 0] = -np.stack([c3, c2, c1, c0], -1)
    comp[:, 1, 0] = comp[:, 2, 1] = comp[:, 3, 2] = 1.0
    roots = np.linalg.eigvals(comp)
    t = np.where(np.abs(roots.imag) < 1e-3, roots.real, np.inf)
    f = lambda x: (((x + c3[:, None]) * x + c2[:, None]) * x + c1[:, None]) * x + c0[:, None]
    df = lambda x: ((4 * x + 3 * c3[:, None]) * x + 2 * c2[:, None]) * x + c1[:, None]
    for _ in range(3):
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(np.isfinite(t), f(t) / df(t), 0.0)
        t = t - np.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
    p = o[:, None, :] + np.where(np.isfinite(t), t, 0)[..., None] * d[:, None, :]
    dist = np.abs(np.hypot(np.hypot(p[..., 0], p[..., 1]) - big, p[..., 2]) - small)
    t = np.where((dist < 1e-6) & (t > _EPS), t, np.inf)
    return t.min(-1)


# ---------------------------------------------------------------------------------------------------------
# Rendering


def _texture(p: Primitive, local_points: np.ndarray) -> np.ndarray:
    name = TEXTURES[p.texture]
    if name == "solid":
        w = np.zeros(local_points.shape[0])
    elif name == "stripes":
        w = (np.sin(2 * np.pi * p.frequency * local_points[:, 2]) > 0).astype(np.float64)
    else:
        w = np.floor(p.frequency * local_points).sum(-1) % 2
    return p.colors[0] * (1 - w[:, None]) + p.colors[1] * w[:, None]


def cast_rays(prims: list[Primitive], origins: np.ndarray, dirs: np.ndarray):
    """Rays (N, 3) with unit dirs -> (t (N,) inf = miss, world normal (N, 3), shaded colour (N, 3),
    index of the primitive hit (N,), -1 = miss)."""
    best_t = np.full(origins.shape[0], np.inf)
    normal = np.zeros_like(origins)
    color = np.zeros_like(origins)
    which = np.full(origins.shape[0], -1)
    # Only rays that meet the unit cube's bounding sphere, then a primitive's bounding sphere, can hit it.
    near_object = np.flatnonzero(np.isfinite(_hit_sphere(origins, dirs, 0.8661)))
    o_obj, d_obj = origins[near_object], dirs[near_object]
    for index, p in enumerate(prims):
        rays = near_object[np.isfinite(_hit_sphere(o_obj, d_obj, bounding_radius(p.kind, p.params) + 1e-6,
                                                   p.center))]
        if rays.size == 0:
            continue
        o_l = (origins[rays] - p.center) @ p.rotation
        d_l = dirs[rays] @ p.rotation
        t, n_l = _intersect(KINDS[p.kind], p.params, o_l, d_l)
        closer = t < best_t[rays]
        if not closer.any():
            continue
        hit_rays = rays[closer]
        best_t[hit_rays] = t[closer]
        which[hit_rays] = index
        normal[hit_rays] = n_l[closer] @ p.rotation.T
        color[hit_rays] = _texture(p, o_l[closer] + t[closer, None] * d_l[closer])
    normal /= np.maximum(np.sqrt(_dot(normal, normal)), 1e-12)[:, None]
    shade = _AMBIENT + np.clip(normal @ _LIGHTS.T, 0, None) @ _LIGHT_WEIGHTS
    return best_t, normal, np.clip(color * shade[:, None], 0, 1), which


def _rays(c2w, K, height, width):
    rays = geometry.host_pixel_rays(c2w, K, height, width)
    d = np.asarray(rays.directions, np.float64).reshape(-1, 3)
    o = np.asarray(rays.origins, np.float64).reshape(-1, 3)
    norm = np.sqrt(_dot(d, d))
    return o, d / norm[:, None], norm


def _boundary(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 3x3 neighbourhood holds more than one label."""
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    out = np.zeros(labels.shape, bool)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w] != labels
    return out


def render_view(prims: list[Primitive], c2w: np.ndarray, K: np.ndarray, size: int, supersample: int = 2):
    """-> rgba (H, W, 4) uint8 (straight alpha), z-depth (H, W) float32 (0 = background), normal (H, W, 3).

    Depth, normals and colour come from the pixel-centre rays; pixels next to a silhouette or a boundary
    between primitives (3x3 neighbourhood of the centre rays) get ``supersample^2`` sub-pixel rays for their
    colour and alpha coverage.
    """
    o, d, norm = _rays(c2w, K, size, size)
    t, normal, color, which = cast_rays(prims, o, d)
    hit = np.isfinite(t)
    depth = np.where(hit, t / norm, 0.0).reshape(size, size).astype(np.float32)
    normal = np.where(hit[:, None], normal, 0.0).reshape(size, size, 3).astype(np.float32)
    cov = hit.astype(np.float64)
    premult = color * cov[:, None]
    if supersample > 1:
        s = supersample
        edge = np.flatnonzero(_boundary(which.reshape(size, size)))
        if edge.size:
            o_s, d_s, _ = _rays(c2w, K, size * s, size * s)
            sub = lambda x: x.reshape(size, s, size, s, 3).transpose(0, 2, 1, 3, 4).reshape(size * size, s * s, 3)
            o_s, d_s = sub(o_s)[edge].reshape(-1, 3), sub(d_s)[edge].reshape(-1, 3)
            t_s, _, color_s, _ = cast_rays(prims, o_s, d_s)
            hit_s = np.isfinite(t_s).astype(np.float64).reshape(-1, s * s)
            cov[edge] = hit_s.mean(-1)
            premult[edge] = (color_s.reshape(-1, s * s, 3) * hit_s[..., None]).mean(1)
    cov = cov.reshape(size, size)
    rgb = premult.reshape(size, size, 3) / np.maximum(cov, 1e-12)[..., None]
    rgba = np.concatenate([rgb, cov[..., None]], -1)
    return np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8), depth, normal


def gobjaverse_layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The 40-view layout of the module docstring -> c2w (40, 4, 4), K (40, 3, 3), float32."""
    n_orbit = gobjaverse_io.NUM_ORBIT_VIEWS
    n_rand = gobjaverse_io.NUM_VIEWS - n_orbit
    az = np.concatenate([rng.uniform(0, 360) + 15.0 * np.arange(n_orbit), rng.uniform(0, 360, n_rand)])
    el = np.concatenate([np.full(n_orbit, rng.uniform(5, 30)), rng.uniform(-10, 50, n_rand)])
    radius = np.concatenate([np.full(n_orbit, ORBIT_RADIUS), rng.uniform(1.6, 2.0, n_rand)])
    c2w = np.asarray(geometry.spherical_c2w(az, el, radius), np.float32)
    K = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(FOV_DEG), np.float32), (len(az), 3, 3))
    return c2w, np.ascontiguousarray(K)


def write_object(object_dir: str, prims: list[Primitive], c2ws, Ks, size: int, supersample: int = 2) -> None:
    """Render and write all views of one object in the GObjaverse layout, plus ``object.json``."""
    os.makedirs(object_dir, exist_ok=True)
    for v, (c2w, K) in enumerate(zip(c2ws, Ks, strict=True)):
        rgba, depth, normal = render_view(prims, c2w, K, size, supersample)
        gobjaverse_io.write_view(object_dir, v, rgba, normal, depth, c2w, K)
    with open(os.path.join(object_dir, "object.json"), "w") as f:
        json.dump({"primitives": object_to_json(prims)}, f)


def write_sample(out_dir: str, seed: int = 0, size: int = 128, supersample: int = 4) -> str:
    """Write one object's 6 Zero123++-layout views (``geometry.zero123pp_cameras``) as RGBA PNGs plus
    ``cameras.json`` = {"frames": [{"file", "c2w" (4x4 OpenGL), "K" (3x3 normalized)}]}; returns its path.

    The object is the one of 32 candidates (drawn from ``seed``) with the largest silhouette in these views.
    """
    cams = geometry.zero123pp_cameras()
    c2ws, Ks = np.asarray(cams.c2w, np.float32), np.asarray(cams.K, np.float32)

    def coverage(prims):
        views = zip(c2ws, Ks, strict=True)
        return np.mean([render_view(prims, c, k, 32, 1)[1].astype(bool).mean() for c, k in views])

    candidates = [random_object(np.random.default_rng(np.random.SeedSequence([seed, 999_999, j])))
                  for j in range(32)]
    prims = max(candidates, key=coverage)
    os.makedirs(out_dir, exist_ok=True)
    frames = []
    for v, (c2w, K) in enumerate(zip(c2ws, Ks, strict=True)):
        rgba, _, _ = render_view(prims, c2w, K, size, supersample)
        name = f"{v:03d}.png"
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(gobjaverse_io.encode_png(rgba))
        frames.append({"file": name, "c2w": np.round(c2w.astype(np.float64), 7).tolist(),
                       "K": np.round(K.astype(np.float64), 7).tolist()})
    path = os.path.join(out_dir, "cameras.json")
    with open(path, "w") as f:
        json.dump({"frames": frames, "source": f"geolrm_jax.data.synthetic.write_sample(seed={seed}, size={size})",
                   "primitives": object_to_json(prims)}, f, indent=1)
    return path


def object_name(index: int) -> str:
    return f"{index // 1000}/{index:06d}"


def _write_one(args):
    root, index, seed, size, supersample = args
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    prims = random_object(rng)
    c2ws, Ks = gobjaverse_layout(rng)
    write_object(os.path.join(root, object_name(index)), prims, c2ws, Ks, size, supersample)
    return object_name(index)


def write_dataset(root: str, num_objects: int = 64, image_size: int = 128, seed: int = 0,
                  validation_objects: int = 0, supersample: int = 2, num_workers: int = 1) -> str:
    """Generate ``num_objects`` objects under ``root`` in the GObjaverse layout; returns the object-list path.

    Object i is a deterministic function of (seed, i). The last ``validation_objects`` go to the
    ``validation`` split of ``root/object_list.json``, the others to ``train``.
    """
    os.makedirs(root, exist_ok=True)
    jobs = [(root, i, seed, image_size, supersample) for i in range(num_objects)]
    if num_workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            names = pool.map(_write_one, jobs, chunksize=1)
    else:
        names = [_write_one(j) for j in jobs]
    n_train = num_objects - validation_objects
    split = {"train": names[:n_train], "validation": names[n_train:]}
    path = os.path.join(root, "object_list.json")
    with open(path, "w") as f:
        json.dump(split, f, indent=0)
    return path
