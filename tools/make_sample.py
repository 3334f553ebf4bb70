"""Build the bundled sample and its evaluation truth: a mug on a saucer, made as a mesh and path traced by
Mitsuba 3 (``geolrm_jax.data.render_meshes``), a renderer other than the one the demo model trained with.

    python tools/make_sample.py                   # -> geolrm_jax/assets/sample and tests/data/sample_truth
    python tools/make_sample.py --sample /tmp/s --truth /tmp/t --spp 16

The object: a saucer (blue), a mug (terracotta with a yellow band outside, cream inside) standing on it, and a
handle (a torus segment whose ends sink into the mug's wall). Each part is a closed triangle mesh (solids of
revolution and a capped tube) with face colours (sRGB); the union is centred on its bounding box and scaled so
its longest side is ``EXTENT`` (0.9: inside [-0.45, 0.45]^3, as the training objects), z up.

Written (each folder built beside its destination and swapped in whole):

* ``--sample`` (``geolrm_jax/assets/sample``): the 6 Zero123++ views (``geometry.zero123pp_cameras()``:
  azimuth 30 + 60k, elevation +20/-10 alternating, radius 4, fov 30 degrees) as straight-alpha RGBA PNGs
  ``000.png``..``005.png`` (``geolrm-jax reconstruct`` composites them on white) and ``cameras.json``
  (``{"frames": [{"file", "c2w" 4x4 OpenGL, "K" 3x3 normalized}], "source", "object"}``);
* ``--truth`` (``tests/data/sample_truth``): ``HELD_OUT_VIEWS`` views of the same object at other azimuths
  and elevations, same radius and fov and size, in the same layout (``cameras.json``), and
  ``surface_points.ply``: ``NUM_POINTS`` points drawn uniformly (by area) on the visible surface of the union
  (points of one part that lie inside another are dropped), with ``red green blue`` (uint8, the part's colour,
  sRGB albedo), ``seen_red seen_green seen_blue`` (uint8, the mean colour of the point in the 14 renders where
  it is visible; depth-tested) and ``seen`` (uint8, in how many of the 14 renders it is visible).

Deterministic: the geometry is fixed, the surface samples and the path tracer are seeded (``--seed``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geolrm_jax import geometry, io_atomic  # noqa: E402
from geolrm_jax.data import gobjaverse_io, render_meshes  # noqa: E402

EXTENT = 0.9
RADIUS, FOV_DEG = 4.0, 30.0  # the Zero123++ rig
HELD_OUT_VIEWS = ((0.0, 5.0), (60.0, 35.0), (120.0, 5.0), (180.0, 35.0), (240.0, 5.0), (300.0, 35.0),
                  (45.0, -5.0), (225.0, 50.0))  # (azimuth, elevation) in degrees: none is an input view
NUM_POINTS = 20_000
VISIBILITY_TOLERANCE = 0.01  # world units: a point is seen where the view's depth map is this close to it

TERRACOTTA, YELLOW, CREAM, BLUE = (196, 82, 52), (240, 196, 60), (240, 232, 212), (58, 104, 178)
SECTIONS = 96  # around the axis of revolution


class Part(NamedTuple):
    """One closed part: its mesh (face colours) and an exact inside test, both in the design frame."""

    name: str
    mesh: object  # trimesh.Trimesh
    inside: Callable[[np.ndarray], np.ndarray]  # points (N, 3) -> (N,) bool, strictly inside


def _inside_polygon(points2d: np.ndarray, polygon) -> np.ndarray:
    """Even-odd test of points (N, 2) against a closed polygon (M, 2)."""
    poly = np.asarray(polygon, np.float64)
    (ax, ay), (bx, by) = poly.T[:, None], np.roll(poly, -1, axis=0).T[:, None]  # edges a -> b, each (1, M)
    x, y = points2d[:, :1], points2d[:, 1:]
    straddles = (ay > y) != (by > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = ax + (y - ay) * (bx - ax) / (by - ay)
    return (np.sum(straddles & (x < cross_x), axis=1) % 2) == 1


def revolved_part(name: str, profile, sections: int = SECTIONS) -> Part:
    """A closed solid of revolution about z from an (r, z) profile that starts and ends on the axis."""
    import trimesh

    mesh = trimesh.creation.revolve(np.asarray(profile, np.float64), sections=sections)
    mesh.merge_vertices()
    mesh.fix_normals()
    polygon = np.asarray(profile, np.float64)

    def inside(points):
        return _inside_polygon(np.stack([np.linalg.norm(points[:, :2], axis=-1), points[:, 2]], -1), polygon)

    return Part(name, mesh, inside)


def handle_part(centre_x: float, centre_z: float, arc_radius: float, tube_radius: float, half_angle_deg: float,
                arc_steps: int = 48, ring_steps: int = 24) -> Part:
    """A capped tube along the arc (centre_x + R cos t, 0, centre_z + R sin t), |t| <= half_angle, in the xz
    plane (a torus segment), closed by a flat disc at each end."""
    import trimesh

    t = np.radians(np.linspace(-half_angle_deg, half_angle_deg, arc_steps + 1))
    phi = np.linspace(0, 2 * np.pi, ring_steps, endpoint=False)
    centres = np.stack([centre_x + arc_radius * np.cos(t), np.zeros_like(t), centre_z + arc_radius * np.sin(t)], -1)
    radial = np.stack([np.cos(t), np.zeros_like(t), np.sin(t)], -1)
    side = np.array([0.0, 1.0, 0.0])
    rings = centres[:, None] + tube_radius * (np.cos(phi)[None, :, None] * radial[:, None]
                                              + np.sin(phi)[None, :, None] * side)
    vertices = np.concatenate([rings.reshape(-1, 3), centres[[0, -1]]])
    i, j = np.meshgrid(np.arange(arc_steps), np.arange(ring_steps), indexing="ij")
    a, b = i * ring_steps + j, i * ring_steps + (j + 1) % ring_steps
    c, d = a + ring_steps, b + ring_steps
    faces = [np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)]
    start, end = len(vertices) - 2, len(vertices) - 1
    ring = np.arange(ring_steps)
    faces.append(np.stack([np.full(ring_steps, start), (ring + 1) % ring_steps, ring], -1))
    last = arc_steps * ring_steps
    faces.append(np.stack([np.full(ring_steps, end), last + ring, last + (ring + 1) % ring_steps], -1))
    mesh = trimesh.Trimesh(vertices, np.concatenate(faces), process=True)
    mesh.fix_normals()

    def inside(points):
        u, w = points[:, 0] - centre_x, points[:, 2] - centre_z
        angle = np.degrees(np.arctan2(w, u))
        return (np.abs(angle) < half_angle_deg) & (np.hypot(np.hypot(u, w) - arc_radius, points[:, 1]) < tube_radius)

    return Part("handle", mesh, inside)


def _colour_faces(mesh, colours) -> None:
    colours = np.broadcast_to(np.asarray(colours, np.uint8), (len(mesh.faces), 3))
    mesh.visual.face_colors = np.concatenate([colours, np.full((len(mesh.faces), 1), 255, np.uint8)], -1)


def build_parts() -> tuple[list[Part], np.ndarray]:
    """The parts in the design frame (z up, the saucer's base at z = 0) and the 4x4 transform that centres the
    union on its bounding box, scales its longest side to ``EXTENT`` and turns it about z."""
    import trimesh

    saucer = revolved_part("saucer", [(0, 0), (0.36, 0), (0.40, 0.05), (0.37, 0.05), (0.30, 0.035), (0, 0.035)])
    _colour_faces(saucer.mesh, BLUE)

    outer, wall, floor, bottom, top = 0.25, 0.03, 0.04, 0.03, 0.52  # the mug's base sinks into the saucer
    band = (0.30, 0.37)
    mug = revolved_part("mug", [(0, bottom), (outer, bottom), (outer, band[0]), (outer, band[1]), (outer, top),
                                (outer - wall, top), (outer - wall, bottom + floor), (0, bottom + floor)])
    centroid = mug.mesh.triangles_center
    radius = np.linalg.norm(centroid[:, :2], axis=-1)
    in_band = (radius > outer - 1e-3) & (centroid[:, 2] > band[0]) & (centroid[:, 2] < band[1])
    inside = (radius < outer - wall + 1e-3) & (centroid[:, 2] > bottom + floor / 2)  # the rim stays terracotta
    _colour_faces(mug.mesh, np.where(in_band[:, None], YELLOW, np.where(inside[:, None], CREAM, TERRACOTTA)))

    # the ends at x = 0.27 + 0.13 cos(105 deg) = 0.236 sit mid-wall (the wall spans r = 0.22..0.25)
    handle = handle_part(centre_x=outer + 0.02, centre_z=0.30, arc_radius=0.13, tube_radius=0.022,
                         half_angle_deg=105.0)
    _colour_faces(handle.mesh, TERRACOTTA)
    parts = [saucer, mug, handle]

    low, high = trimesh.util.concatenate([p.mesh for p in parts]).bounds
    turn = trimesh.transformations.rotation_matrix(np.radians(-20.0), [0, 0, 1])  # handle between input views
    scale = np.diag([EXTENT / float((high - low).max())] * 3 + [1.0])
    transform = turn @ scale @ trimesh.transformations.translation_matrix(-(low + high) / 2)
    return parts, transform


def union_mesh(parts: list[Part], transform: np.ndarray):
    """One mesh of all parts (face colours kept) in the final placement, as ``render_meshes.mitsuba_shape``
    takes it."""
    import trimesh

    mesh = trimesh.util.concatenate([p.mesh for p in parts])
    mesh.apply_transform(transform)
    return mesh


def surface_points(parts: list[Part], transform: np.ndarray, count: int, seed: int):
    """``count`` points uniform by area on the union's visible surface, in the final placement -> (points
    (count, 3) float32, albedo (count, 3) uint8). Points of a part inside another part are dropped (the draw is
    oversampled, then cut to ``count``)."""
    import trimesh

    rng = np.random.default_rng(seed)
    areas = np.array([p.mesh.area for p in parts])
    points, colours = [], []
    for part, share in zip(parts, areas / areas.sum(), strict=True):
        p, face = trimesh.sample.sample_surface(part.mesh, int(np.ceil(1.4 * count * share)),
                                                seed=int(rng.integers(2**31)))
        keep = np.ones(len(p), bool)
        for other in parts:
            if other is not part:
                keep &= ~other.inside(p)
        points.append(p[keep])
        colours.append(np.asarray(part.mesh.visual.face_colors)[face[keep], :3])
    points, colours = np.concatenate(points), np.concatenate(colours)
    if len(points) < count:
        raise RuntimeError(f"only {len(points)} visible surface samples for {count}")
    pick = np.sort(rng.choice(len(points), count, replace=False))
    placed = points[pick] @ transform[:3, :3].T + transform[:3, 3]
    return placed.astype(np.float32), colours[pick].astype(np.uint8)


def cameras(views) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth, elevation) pairs in degrees at ``RADIUS``, fov ``FOV_DEG`` -> c2w (V, 4, 4), K (V, 3, 3)."""
    az, el = np.asarray(views, np.float64).T
    c2w = np.asarray(geometry.spherical_c2w(az, el, RADIUS), np.float64)
    K = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(FOV_DEG), np.float64), (len(az), 3, 3))
    return c2w, np.ascontiguousarray(K)


def seen_colours(points, renders, c2w, K):
    """Mean straight-alpha colour (uint8) of each point over the renders where it is visible (its z-depth
    within ``VISIBILITY_TOLERANCE`` of the render's depth at its pixel) and the number of such renders."""
    total = np.zeros((len(points), 3))
    seen = np.zeros(len(points), np.int64)
    for (rgba, depth), view_c2w, view_K in zip(renders, c2w, K, strict=True):
        size = depth.shape[0]
        cam = (points - view_c2w[:3, 3]) @ view_c2w[:3, :3]  # camera frame: x right, y up, looking down -z
        z = -cam[:, 2]
        x = np.floor(view_K[0, 2] * size + view_K[0, 0] * size * cam[:, 0] / z).astype(np.int64)
        y = np.floor(view_K[1, 2] * size - view_K[1, 1] * size * cam[:, 1] / z).astype(np.int64)
        inside = (x >= 0) & (x < size) & (y >= 0) & (y < size) & (z > 0)
        xi, yi = np.clip(x, 0, size - 1), np.clip(y, 0, size - 1)
        visible = inside & (depth[yi, xi] > 0) & (np.abs(depth[yi, xi] - z) < VISIBILITY_TOLERANCE)
        visible &= rgba[yi, xi, 3] == 255  # interior pixels only: edge pixels blend the background
        total[visible] += rgba[yi[visible], xi[visible], :3]
        seen += visible
    mean = np.where(seen[:, None] > 0, total / np.maximum(seen, 1)[:, None], 0)
    return np.round(mean).astype(np.uint8), seen


def render(mesh, c2w, K, size: int, spp: int, seed: int, variant: str):
    mi = render_meshes._mitsuba(variant)
    shape = render_meshes.mitsuba_shape(mi, mesh)
    out = []
    for v, (view_c2w, view_K) in enumerate(zip(c2w, K, strict=True)):
        rgba, depth, _ = render_meshes.render_view(mi, shape, view_c2w, view_K, size, spp, seed=seed * 64 + v)
        out.append((rgba, depth))
    return out


def write_views(folder: pathlib.Path, renders, c2w, K, extra: dict) -> None:
    frames = []
    for v, ((rgba, _), view_c2w, view_K) in enumerate(zip(renders, c2w, K, strict=True)):
        name = f"{v:03d}.png"
        (folder / name).write_bytes(gobjaverse_io.encode_png(rgba))
        frames.append({"file": name, "c2w": np.round(view_c2w, 7).tolist(), "K": np.round(view_K, 7).tolist()})
    (folder / "cameras.json").write_text(json.dumps({"frames": frames, **extra}, indent=1))


def write_points(path: pathlib.Path, points, albedo, seen_rgb, seen) -> None:
    from plyfile import PlyData, PlyElement

    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
              ("seen_red", "u1"), ("seen_green", "u1"), ("seen_blue", "u1"), ("seen", "u1")]
    vertex = np.empty(len(points), dtype=fields)
    for i, axis in enumerate("xyz"):
        vertex[axis] = points[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = albedo[:, i]
        vertex[f"seen_{channel}"] = seen_rgb[:, i]
    vertex["seen"] = seen
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", default=str(REPO / "geolrm_jax" / "assets" / "sample"))
    parser.add_argument("--truth", default=str(REPO / "tests" / "data" / "sample_truth"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--spp", type=int, default=64, help="path-tracing samples per pixel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="scalar_rgb", help="Mitsuba variant (scalar_rgb, llvm_ad_rgb)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    parts, transform = build_parts()
    mesh = union_mesh(parts, transform)
    in_c2w = np.asarray(geometry.zero123pp_cameras().c2w, np.float64)
    in_K = np.asarray(geometry.zero123pp_cameras().K, np.float64)
    out_c2w, out_K = cameras(HELD_OUT_VIEWS)
    inputs = render(mesh, in_c2w, in_K, args.size, args.spp, args.seed, args.variant)
    held_out = render(mesh, out_c2w, out_K, args.size, args.spp, args.seed + 1, args.variant)
    points, albedo = surface_points(parts, transform, NUM_POINTS, args.seed)
    seen_rgb, seen = seen_colours(points, inputs + held_out, np.concatenate([in_c2w, out_c2w]),
                                  np.concatenate([in_K, out_K]))

    described = {"source": f"tools/make_sample.py --size {args.size} --spp {args.spp} --seed {args.seed}",
                 "object": f"a mug on a saucer: {len(mesh.faces)} triangles, longest side {EXTENT}, rendered by "
                           "Mitsuba 3 (geolrm_jax.data.render_meshes)"}
    with io_atomic.staged_output(args.sample) as tmp:
        write_views(tmp, inputs, in_c2w, in_K, described)
    with io_atomic.staged_output(args.truth) as tmp:
        write_views(tmp, held_out, out_c2w, out_K,
                    {**described, "views": [{"azimuth": a, "elevation": e} for a, e in HELD_OUT_VIEWS],
                     "radius": RADIUS, "fov_deg": FOV_DEG, "extent": EXTENT})
        write_points(tmp / "surface_points.ply", points, albedo, seen_rgb, seen)
    size = sum(p.stat().st_size for folder in (args.sample, args.truth) for p in pathlib.Path(folder).iterdir())
    print(f"wrote {args.sample} and {args.truth} ({size / 1e6:.2f} MB; {len(mesh.faces)} triangles; "
          f"{int((seen > 0).sum())}/{len(seen)} surface points seen; {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
