"""A coloured triangle mesh from 3D Gaussians: TSDF fusion of splatted depth and colour, marching cubes, decimation.

    mesh = gaussians_to_mesh(gaussians)            # one scene's Gaussians -> trimesh.Trimesh (vertex colours)
    write_mesh_files(out_dir, gaussians)           # -> out_dir/mesh.glb and out_dir/mesh.obj

Steps (``MeshSettings`` holds every knob):

1. **Views**: ``num_views`` cameras on a Fibonacci sphere around the centre of the Gaussians' bounding box
   (those with opacity >= ``min_opacity``), far enough that the bounding sphere fits the ``fov_deg`` view.
2. **Splatting**: the project's renderer (``render.splat.render_with_retry``) gives per view the accumulated
   alpha A = sum a_i T_i, D = sum a_i T_i z_i and C = sum a_i T_i c_i (black background). A pixel is *surface*
   where A >= ``alpha_threshold`` (depth D / A, colour C / A) and *empty* where A < ``empty_alpha``.
3. **TSDF fusion** on a cubic grid of ``resolution``^3 voxels over the bounding box (padded): each voxel
   centre is projected into every view; with the pixel's depth d and the voxel's view depth z,
   s = clip((d - z) / trunc, -1, 1) is averaged over the views where s > -1 (surface pixels), each weighted by
   |cos| of the angle between the pixel's ray and the normal of the depth map there (grazing views count
   little); empty pixels count as s = 1 with weight 1 (space carving); voxels never seen keep -1 (inside).
   trunc = ``truncation_voxels`` voxels. Colour is averaged, with the same weights, over the surface pixels
   where |d - z| < trunc.
4. **Marching cubes** (scikit-image) at level 0, components under ``min_component_fraction`` of the faces
   dropped, then quadric decimation (fast-simplification) to at most ``max_faces`` faces; vertex colours are
   sampled (trilinearly, weighted by the colour weights) from the fused colour grid at the final vertices.

Coordinates: the mesh lives in the Gaussians' world frame (z up, as the model's outputs). Colours in [0, 1]
become 8-bit RGBA vertex colours. Needs the optional extra ``mesh`` (``pip install -e '.[mesh]'``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax.geometry_metrics import SURFACE_MIN_OPACITY

MESH_FILES = ("mesh.glb", "mesh.obj")


class MeshError(ValueError):
    """No surface could be extracted (e.g. every Gaussian is transparent)."""


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    resolution: int = 128  # voxels along the longest side of the (padded) bounding box
    num_views: int = 48
    image_size: int = 192
    fov_deg: float = 40.0
    alpha_threshold: float = 0.5  # surface pixels: accumulated alpha at least this
    empty_alpha: float = 0.05  # empty pixels (carve space): accumulated alpha below this
    truncation_voxels: float = 3.0
    min_opacity: float = SURFACE_MIN_OPACITY  # Gaussians that define the bounding box
    min_component_fraction: float = 0.01
    max_faces: int = 50_000
    chunk: int = 8  # cameras per render call


def _import_mesh_libraries():
    try:
        import fast_simplification  # noqa: F401
        import skimage.measure  # noqa: F401
        import trimesh  # noqa: F401
    except ImportError as err:
        raise ImportError(f"mesh export needs the optional extra 'mesh' (pip install -e '.[mesh]'): {err}") from err


def fibonacci_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (golden-angle spiral, z from ~1 to ~-1)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def fusion_cameras(center, radius: float, num_views: int, fov_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Cameras (c2w (V, 4, 4) OpenGL, normalized K (V, 3, 3)) looking at ``center`` from a sphere far enough
    that a ball of ``radius`` fills at most ~90% of the field of view."""
    from geolrm_jax import geometry

    distance = radius / np.sin(np.deg2rad(fov_deg) / 2) / 0.9
    dirs = fibonacci_directions(num_views)
    # look_at degenerates when the view direction is parallel to its up vector (the poles): use y-up there.
    up = np.where(np.abs(dirs[:, 2:3]) > 0.99, [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]])
    center = np.asarray(center, np.float32)
    c2w = np.asarray(geometry.look_at(center + distance * dirs, center, up))
    K = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(fov_deg)), (num_views, 3, 3))
    return c2w.astype(np.float32), np.ascontiguousarray(K, np.float32)


def _bounds(g, min_opacity: float) -> tuple[np.ndarray, np.ndarray]:
    keep = g.opacities >= min_opacity
    if not keep.any():
        raise MeshError(f"no Gaussian has opacity >= {min_opacity}: nothing to mesh")
    extent = 3.0 * g.scales[keep].max(-1, keepdims=True)
    return (g.means[keep] - extent).min(0), (g.means[keep] + extent).max(0)


def render_depth_colour(g, c2w, K, size: int, chunk: int = 8):
    """Splat one scene's Gaussians (``export.GaussianArrays``) into cameras -> (alpha, depth, rgb), each
    (V, size, size[, 3]) float32; depth and rgb are normalized by alpha (0 where alpha is 0)."""
    from geolrm_jax.render.gaussians import Gaussians
    from geolrm_jax.render.splat import render_with_retry

    gaussians = Gaussians(*(jnp.asarray(a)[None] for a in g))
    alphas, depths, rgbs = [], [], []
    for start in range(0, len(c2w), chunk):
        index = np.minimum(np.arange(start, start + chunk), len(c2w) - 1)  # pad the last chunk: one program
        out = render_with_retry(gaussians, jnp.asarray(c2w[index])[None], jnp.asarray(K[index])[None], size, size,
                                jnp.zeros(3, jnp.float32))
        n = min(chunk, len(c2w) - start)
        alphas.append(np.asarray(out.alpha[0, :n]))
        depths.append(np.asarray(out.depth[0, :n]))
        rgbs.append(np.asarray(out.rgb[0, :n]))
    alpha, depth, rgb = (np.concatenate(x) for x in (alphas, depths, rgbs))
    safe = np.maximum(alpha, 1e-6)
    return alpha, np.where(alpha > 0, depth / safe, 0.0), np.clip(np.where(alpha[..., None] > 0, rgb / safe[..., None],
                                                                           0.0), 0, 1)


def view_facing(depth, surface, K) -> np.ndarray:
    """|cos| of the angle between each pixel's ray and the surface normal estimated from the depth map (H, W)
    by central differences of the unprojected points; 0 off the surface and where a neighbour is off it."""
    size = depth.shape[-1]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    x = (coords[None, :] - K[0, 2]) / K[0, 0]
    y = -(coords[:, None] - K[1, 2]) / K[1, 1]
    rays = np.stack(np.broadcast_arrays(x, y, -np.ones_like(x)), -1)
    points = rays * depth[..., None]
    du = np.zeros_like(points)
    dv = np.zeros_like(points)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1] = points[2:] - points[:-2]
    normal = np.cross(du, dv)
    cos = np.abs(np.sum(normal * rays, -1)) / np.maximum(
        np.linalg.norm(normal, axis=-1) * np.linalg.norm(rays, axis=-1), 1e-12)
    ok = surface.copy()
    ok[:, 1:-1] &= surface[:, 2:] & surface[:, :-2]
    ok[1:-1] &= surface[2:] & surface[:-2]
    ok[[0, -1]] = False
    ok[:, [0, -1]] = False
    return np.where(ok, cos, 0.0).astype(np.float32)


def tsdf_fuse(alpha, depth, rgb, c2w, K, origin, voxel: float, shape, settings: MeshSettings):
    """Fuse views (alpha, depth, rgb as from ``render_depth_colour``) into a grid of ``shape`` voxels of size
    ``voxel`` whose first centre is ``origin`` -> numpy (tsdf, colour sum, colour weight).

    Each voxel gathers from the pixel its centre projects into (no scatter), one view after another
    (``lax.scan``), on the default device."""
    facing = np.stack([view_facing(d, a >= settings.alpha_threshold, k) for d, a, k in zip(depth, alpha, K,
                                                                                            strict=True)])
    views = tuple(jnp.asarray(x, jnp.float32) for x in (alpha, depth, rgb, facing, c2w, K))
    tsdf, colour, colour_weight = _fuse_jit(views, jnp.asarray(origin, jnp.float32), float(voxel), tuple(shape),
                                            settings.truncation_voxels * voxel, settings.alpha_threshold,
                                            settings.empty_alpha)
    return np.array(tsdf), np.array(colour), np.array(colour_weight)  # writable: skimage needs it


@functools.partial(jax.jit, static_argnums=(3,))
def _fuse_jit(views, origin, voxel, shape, trunc, alpha_threshold, empty_alpha):
    size = views[0].shape[-1]
    axes = [origin[i] + voxel * jnp.arange(shape[i], dtype=jnp.float32) for i in range(3)]
    points = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def one_view(carry, view):
        tsdf_sum, weight, colour, colour_weight = carry
        a_img, d_img, rgb_img, facing, c2w, K = view
        cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # camera frame: x right, y up, looking down -z
        z = -cam[:, 2]
        safe_z = jnp.where(z > 1e-6, z, 1.0)
        col = jnp.floor(K[0, 2] * size + K[0, 0] * size * cam[:, 0] / safe_z)
        row = jnp.floor(K[1, 2] * size - K[1, 1] * size * cam[:, 1] / safe_z)
        visible = (z > 1e-6) & (col >= 0) & (col < size) & (row >= 0) & (row < size)
        pixel = jnp.clip(row, 0, size - 1).astype(jnp.int32) * size + jnp.clip(col, 0, size - 1).astype(jnp.int32)
        a, d, f = a_img.reshape(-1)[pixel], d_img.reshape(-1)[pixel], facing.reshape(-1)[pixel]
        surface = visible & (a >= alpha_threshold)
        empty = visible & (a < empty_alpha)
        sdf = jnp.clip((d - z) / trunc, -1.0, 1.0)
        w = jnp.where(surface & (sdf > -1.0), f, jnp.where(empty, 1.0, 0.0))
        value = jnp.where(surface, sdf, 1.0)
        wc = jnp.where(surface & (jnp.abs(d - z) < trunc), f, 0.0)
        return (tsdf_sum + w * value, weight + w, colour + wc[:, None] * rgb_img.reshape(-1, 3)[pixel],
                colour_weight + wc), None

    n = points.shape[0]
    init = (jnp.zeros(n), jnp.zeros(n), jnp.zeros((n, 3)), jnp.zeros(n))
    (tsdf_sum, weight, colour, colour_weight), _ = jax.lax.scan(one_view, init, views)
    tsdf = jnp.where(weight > 1e-3, tsdf_sum / jnp.maximum(weight, 1e-3), -1.0)  # never seen: inside
    return tsdf.reshape(shape), colour.reshape(*shape, 3), colour_weight.reshape(shape)


def sample_colours(vertices, colour, colour_weight, origin, voxel: float) -> np.ndarray:
    """Trilinear, weight-normalized colours (N, 3) of the fused grid at world ``vertices`` (N, 3)."""
    from scipy.ndimage import map_coordinates

    coords = ((np.asarray(vertices) - origin) / voxel).T
    weight = map_coordinates(colour_weight, coords, order=1, mode="nearest")
    channels = [map_coordinates(colour[..., i], coords, order=1, mode="nearest") for i in range(3)]
    out = np.stack(channels, -1) / np.maximum(weight, 1e-6)[:, None]
    return np.clip(np.where(weight[:, None] > 1e-6, out, 0.5), 0.0, 1.0)


def gaussians_to_mesh(gaussians, settings: MeshSettings = MeshSettings()):
    """One scene's Gaussians (any object with the ``Gaussians`` fields; a batch axis of 1 is dropped) ->
    ``trimesh.Trimesh`` with per-vertex RGBA colours. Raises ``MeshError`` when no surface is found."""
    _import_mesh_libraries()
    import fast_simplification
    import trimesh
    from skimage import measure

    from geolrm_jax import export

    g = export.to_numpy_gaussians(gaussians, min_opacity=1e-4)
    low, high = _bounds(g, settings.min_opacity)
    center = 0.5 * (low + high)
    radius = float(np.linalg.norm(high - low)) / 2
    c2w, K = fusion_cameras(center, radius, settings.num_views, settings.fov_deg)
    alpha, depth, rgb = render_depth_colour(g, c2w, K, settings.image_size, settings.chunk)
    if not (alpha >= settings.alpha_threshold).any():
        raise MeshError(f"no rendered pixel reaches alpha {settings.alpha_threshold}: the Gaussians are too "
                        "transparent to define a surface")

    voxel = float((high - low).max()) / (settings.resolution - 1)
    pad = int(np.ceil(settings.truncation_voxels)) + 2
    origin = (low - pad * voxel).astype(np.float32)
    shape = tuple(int(n) for n in np.ceil((high - low) / voxel).astype(int) + 1 + 2 * pad)
    tsdf, colour, colour_weight = tsdf_fuse(alpha, depth, rgb, c2w, K, origin, voxel, shape, settings)
    if tsdf.min() >= 0 or tsdf.max() <= 0:
        raise MeshError("the fused volume has no zero crossing: no surface to extract")
    verts, faces, _, _ = measure.marching_cubes(tsdf, level=0.0, spacing=(voxel,) * 3)
    verts = verts + origin
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh = _drop_small_components(mesh, settings.min_component_fraction)
    if len(mesh.faces) > settings.max_faces:
        reduction = 1.0 - settings.max_faces / len(mesh.faces)
        points, new_faces = fast_simplification.simplify(np.asarray(mesh.vertices, np.float32),
                                                         np.asarray(mesh.faces, np.int64), reduction)
        mesh = trimesh.Trimesh(points, new_faces, process=True)
    rgb_vertices = sample_colours(mesh.vertices, colour, colour_weight, origin, voxel)
    rgba = np.concatenate([rgb_vertices, np.ones((len(rgb_vertices), 1))], -1)
    mesh.visual.vertex_colors = np.round(rgba * 255).astype(np.uint8)
    return mesh


def _drop_small_components(mesh, min_fraction: float):
    if min_fraction <= 0 or len(mesh.faces) == 0:
        return mesh
    labels = mesh.graph_components_labels() if hasattr(mesh, "graph_components_labels") else None
    if labels is None:
        import trimesh

        labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    counts = np.bincount(labels)
    keep = counts[labels] >= min_fraction * len(mesh.faces)
    if keep.all():
        return mesh
    mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return mesh


def write_mesh(mesh, path) -> None:
    """Write ``mesh`` as .glb (binary glTF, COLOR_0 vertex colours) or .obj (``v x y z r g b`` lines), by suffix;
    the file appears atomically (written beside it, then renamed)."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix == ".glb":
        data = mesh.export(file_type="glb")
    elif suffix == ".obj":
        data = mesh.export(file_type="obj", include_color=True, include_normals=False, include_texture=False)
    else:
        raise ValueError(f"{path}: mesh suffix must be .glb or .obj")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_mesh_files(out_dir, gaussians, settings: MeshSettings = MeshSettings()) -> dict:
    """``gaussians_to_mesh`` -> ``out_dir/mesh.glb`` and ``out_dir/mesh.obj``; returns {"vertices", "faces"}."""
    mesh = gaussians_to_mesh(gaussians, settings)
    for name in MESH_FILES:
        write_mesh(mesh, pathlib.Path(out_dir) / name)
    return {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces))}


def surface_gaussians(points, normals, colours, spacing: float, opacity: float = 0.95, flatness: float = 0.1):
    """Flat Gaussians lying on a known surface (for tests and the mesh metrics tool): one per point (N, 3),
    its disc spanning ``spacing`` in the tangent plane of its unit normal (N, 3), ``flatness * spacing`` thick.
    Returns ``export.GaussianArrays``."""
    from geolrm_jax import export

    n = np.asarray(normals, np.float64)
    n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    # The rotation taking +z to n: axis z x n, half-angle quaternion (1 + n_z, -n_y, n_x, 0), normalized.
    q = np.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], np.zeros(len(n))], -1)
    flip = q[:, 0] < 1e-6
    q[flip] = [0.0, 1.0, 0.0, 0.0]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    count = len(n)
    scales = np.broadcast_to(np.asarray([spacing, spacing, flatness * spacing]) * 0.6, (count, 3))
    return export.GaussianArrays(np.asarray(points, np.float32), scales.astype(np.float32), q.astype(np.float32),
                                 np.full(count, opacity, np.float32), np.asarray(colours, np.float32))
