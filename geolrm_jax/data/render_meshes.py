"""``geolrm-jax data render``: users' meshes (.glb/.gltf/.obj/.ply/.stl/.off, or folders of them) -> the
GObjaverse layout that ``gobjaverse`` builds a TFDS dataset from, rendered headless on the CPU with Mitsuba 3.

    geolrm-jax data render MESH_OR_FOLDER [...] -o LAYOUT_ROOT [--size 512] [--spp 64] [--validation 0]

Per mesh (loaded with trimesh; a multi-part scene is flattened into one mesh):

* checks, each failing with one line naming the file: unreadable, no triangles, more than ``--max-faces``
  faces, non-finite or degenerate (zero-size) vertices, non-manifold edges (an edge shared by more than two
  faces; ``--allow-non-manifold`` renders such meshes anyway). A bad mesh is reported and skipped, the rest
  go on; the list of failures is also written to ``LAYOUT_ROOT/render_errors.json``;
* orientation: glTF and OBJ files are y-up and are turned z-up (``--up``); the mesh is then centred on its
  bounding box and scaled so its longest side is ``--extent`` (default 1: inside [-0.5, 0.5]^3, as GObjaverse);
* colour: the base-colour texture (UV mapped), vertex or face colours, or the material's base colour
  (default light grey); Lambertian material lit by a constant environment and a directional light (path
  traced, ``--spp`` samples per pixel, box filter);
* cameras: ``synthetic.gobjaverse_layout`` (24 orbit views, 15 degrees apart at one elevation, radius 1.6,
  then 16 random views), seeded by ``--seed`` and the object's index;
* per view ``gobjaverse_io.write_view``: straight-alpha RGBA PNG (sRGB), z-depth and world (Blender-axes)
  normals in the ``_nd.exr`` (both from one exact pixel-centre sample, 0 on the background), camera JSON.

Objects are named ``<group>/<file stem>`` (``group`` = ``--group``, default ``user``) and listed in
``LAYOUT_ROOT/object_list.json`` ({"train": [...], "validation": [the last --validation ones]}). Each object
is written to a temporary folder beside its destination and renamed into place, so a failure leaves nothing
half-written; an existing object is kept unless ``--overwrite``. Then:
``geolrm-jax data build --root LAYOUT_ROOT --data-dir TFDS_DIR``.

Why Mitsuba 3 (``mitsuba`` on PyPI, ~50 MB wheel, no GPU or display needed): a physically based renderer
with exact AOVs (position, shading normal) for depth and normals; Blender as a module (``bpy``, ~300 MB,
pinned to one Python version) is far larger, and GL rasterizers (pyrender, moderngl) need an OpenGL context,
which headless CI machines lack. The ``scalar_rgb`` variant is used by default (its LLVM variants need a newer
libLLVM than some distributions ship; ``--variant llvm_ad_rgb`` where it works is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

import numpy as np

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
Y_UP_SUFFIXES = (".glb", ".gltf", ".obj")
DEFAULT_MAX_FACES = 2_000_000


class MeshInputError(ValueError):
    """A mesh file that cannot be rendered; the message names the file and the reason."""


def find_meshes(paths) -> list[pathlib.Path]:
    """Mesh files named or found (recursively, sorted) in folders; raises MeshInputError for a missing path."""
    found = []
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in MESH_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise MeshInputError(f"{p}: no such file or folder")
    return found


def _srgb_to_linear(c):
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c):
    c = np.clip(np.asarray(c, np.float64), 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def load_mesh(path, up: str = "auto", extent: float = 1.0, max_faces: int = DEFAULT_MAX_FACES,
              allow_non_manifold: bool = False):
    """Read and check one mesh -> ``trimesh.Trimesh`` centred, z-up, longest side ``extent``; raises
    ``MeshInputError`` naming ``path`` and the problem."""
    import trimesh

    path = pathlib.Path(path)
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many types for unreadable files
        raise MeshInputError(f"{path}: cannot read mesh: {err}") from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshInputError(f"{path}: the mesh has no triangles")
    if len(mesh.faces) > max_faces:
        raise MeshInputError(f"{path}: {len(mesh.faces)} faces exceed --max-faces {max_faces}")
    vertices = np.asarray(mesh.vertices, np.float64)
    if not np.all(np.isfinite(vertices)):
        raise MeshInputError(f"{path}: {int(np.sum(~np.isfinite(vertices)))} non-finite vertex coordinates")
    size = np.ptp(vertices[np.unique(mesh.faces)], axis=0)
    if size.max() <= 1e-12:
        raise MeshInputError(f"{path}: the mesh is degenerate (all vertices at one point)")
    if not allow_non_manifold:
        _, counts = np.unique(np.sort(mesh.edges, axis=1), axis=0, return_counts=True)
        if (counts > 2).any():
            raise MeshInputError(f"{path}: non-manifold: {int((counts > 2).sum())} edges are shared by more than "
                                 "two faces (--allow-non-manifold renders it anyway)")
    if up == "auto":
        up = "y" if path.suffix.lower() in Y_UP_SUFFIXES else "z"
    if up == "y":  # (x, y, z) y-up -> (x, -z, y) z-up, as Blender's glTF/OBJ importers do
        mesh.apply_transform(np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]))
    used = np.asarray(mesh.vertices)[np.unique(mesh.faces)]  # stray unreferenced vertices do not count
    low, high = used.min(0), used.max(0)
    mesh.apply_translation(-(low + high) / 2)
    mesh.apply_scale(extent / float((high - low).max()))
    return mesh


def _mitsuba(variant: str):
    try:
        import mitsuba as mi
    except ImportError as err:
        raise ImportError(f"rendering meshes needs the optional extra 'render' (pip install -e '.[render]'): "
                          f"{err}") from err
    if mi.variant() != variant:
        mi.set_variant(variant)
    return mi


def _mitsuba_mesh(mi, vertices, faces, bsdf: dict, texcoords=None):
    props = mi.Properties()
    # Two-sided: open or inconsistently wound meshes are common, and a one-sided BSDF renders back faces black.
    props["bsdf"] = mi.load_dict({"type": "twosided", "bsdf": bsdf})
    shape = mi.Mesh("mesh", vertex_count=len(vertices), face_count=len(faces), props=props,
                    has_vertex_normals=False, has_vertex_texcoords=texcoords is not None)
    params = mi.traverse(shape)
    params["vertex_positions"] = np.asarray(vertices, np.float32).ravel()
    params["faces"] = np.asarray(faces, np.uint32).ravel()
    if texcoords is not None:
        params["vertex_texcoords"] = np.asarray(texcoords, np.float32).ravel()
    params.update()
    return shape


def mitsuba_shape(mi, mesh, default_colour=(0.6, 0.6, 0.6)):
    """A Mitsuba mesh with a two-sided diffuse BSDF coloured by the base-colour texture (sRGB) times the base
    colour factor (linear, as glTF), the vertex or face colours (read as sRGB), or the material's base colour
    factor (``default_colour``, linear, without any)."""
    visual = mesh.visual
    if visual.kind == "face":  # give each face its own vertices so face colours become vertex colours
        colours = np.asarray(visual.face_colors)
        mesh = mesh.copy()
        mesh.unmerge_vertices()
        mesh.visual.vertex_colors = np.repeat(colours, 3, axis=0)
        visual = mesh.visual
    if visual.kind == "vertex":
        shape = _mitsuba_mesh(mi, mesh.vertices, mesh.faces,
                              {"type": "diffuse", "reflectance": {"type": "mesh_attribute", "name": "vertex_color"}})
        linear = _srgb_to_linear(np.asarray(visual.vertex_colors)[:, :3] / 255.0).astype(np.float32)
        shape.add_attribute("vertex_color", 3, linear.ravel())
        return shape
    material = getattr(visual, "material", None)
    factor = None if material is None else getattr(material, "baseColorFactor", None)
    if factor is None and material is not None:
        factor = getattr(material, "diffuse", None)
    factor = np.asarray(default_colour + (1.0,) if factor is None else factor, np.float64)
    factor = factor / 255.0 if factor.max() > 1.0 else factor
    image = None
    if material is not None:
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    uv = getattr(visual, "uv", None)
    if image is not None and uv is not None and len(uv) == len(mesh.vertices):
        texcoords = np.asarray(uv, np.float32).copy()
        texcoords[:, 1] = 1.0 - texcoords[:, 1]  # trimesh: v up (OBJ convention); Mitsuba: v down the image
        rgb = _srgb_to_linear(np.asarray(image.convert("RGB"), np.float64) / 255.0) * factor[:3]  # glTF
        texture = mi.Bitmap(np.ascontiguousarray(rgb, np.float32), pixel_format=mi.Bitmap.PixelFormat.RGB)
        reflectance = {"type": "bitmap", "bitmap": texture, "raw": True, "filter_type": "bilinear"}
        return _mitsuba_mesh(mi, mesh.vertices, mesh.faces, {"type": "diffuse", "reflectance": reflectance},
                             texcoords)
    colour = {"type": "rgb", "value": factor[:3].tolist()}  # base colour factors are linear (glTF, OBJ Kd)
    return _mitsuba_mesh(mi, mesh.vertices, mesh.faces, {"type": "diffuse", "reflectance": colour})


def _sensor(mi, c2w, K, size: int, spp: int, exact: bool):
    """Mitsuba's perspective camera for an OpenGL c2w (its local frame: x left, y up, looking down +z)."""
    fov = float(np.degrees(2 * np.arctan(0.5 / K[0, 0])))
    to_world = np.asarray(c2w, np.float64) @ np.diag([-1.0, 1.0, -1.0, 1.0])
    sampler = ({"type": "stratified", "sample_count": 1, "jitter": False} if exact
               else {"type": "independent", "sample_count": spp})
    return {"type": "perspective", "fov": fov, "fov_axis": "x", "to_world": mi.ScalarTransform4f(to_world),
            "near_clip": 0.01, "far_clip": 100.0, "sampler": sampler,
            "film": {"type": "hdrfilm", "width": size, "height": size, "pixel_format": "rgba",
                     "rfilter": {"type": "box"}}}


def _film(mi, scene) -> dict[str, np.ndarray]:
    return {name: np.asarray(b, np.float32) for name, b in scene.sensors()[0].film().bitmap().split()}


AMBIENT_RADIANCE = 0.5
SUN_IRRADIANCE = 1.2
SUN_DIRECTION = (-0.4, -0.3, -0.866)  # the direction the light travels: down, from the front-left


def render_view(mi, shape, c2w, K, size: int, spp: int, seed: int = 0):
    """One view of a Mitsuba shape -> (rgba (H, W, 4) uint8 straight alpha, sRGB; z-depth (H, W) float32, 0 on
    the background; world normals (H, W, 3), unit, facing the camera, 0 on the background)."""
    lit = mi.load_dict({
        "type": "scene", "integrator": {"type": "path", "max_depth": 4, "hide_emitters": True},
        "sensor": _sensor(mi, c2w, K, size, spp, exact=False), "object": shape,
        "ambient": {"type": "constant", "radiance": {"type": "rgb", "value": AMBIENT_RADIANCE}},
        "sun": {"type": "directional", "direction": list(SUN_DIRECTION),
                "irradiance": {"type": "rgb", "value": SUN_IRRADIANCE}}})
    mi.render(lit, seed=seed)
    premult = _film(mi, lit)["<root>"]  # R, G, B (premultiplied by coverage: black background), A
    alpha = np.clip(premult[..., 3], 0, 1)
    rgb = _linear_to_srgb(premult[..., :3] / np.maximum(alpha, 1e-6)[..., None])
    rgba = np.concatenate([np.where(alpha[..., None] > 0, rgb, 0), alpha[..., None]], -1)
    # Depth and normals: one sample at each pixel centre, so they are exact surface values (no blending).
    aov = mi.load_dict({"type": "scene", "integrator": {"type": "aov", "aovs": "pos:position,nrm:sh_normal"},
                        "sensor": _sensor(mi, c2w, K, size, 1, exact=True), "object": shape})
    mi.render(aov)
    film = _film(mi, aov)
    hit = np.linalg.norm(film["nrm"], axis=-1) > 0.5  # misses have a zero normal
    camera = (film["pos"] - c2w[:3, 3]) @ c2w[:3, :3]
    depth = np.where(hit, -camera[..., 2], 0.0).astype(np.float32)
    normal = film["nrm"]
    towards_camera = np.sum(normal * (c2w[:3, 3] - film["pos"]), -1) >= 0
    normal = np.where(towards_camera[..., None], normal, -normal)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    normal = np.where(hit[..., None], normal, 0.0).astype(np.float32)
    return np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8), depth, normal


def object_name(path: pathlib.Path, group: str, taken: set[str]) -> str:
    """``<group>/<stem>`` with characters other than letters, digits, ``-``, ``_``, ``.`` replaced by ``_``;
    ``-2``, ``-3``... appended when the name is taken."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem) or "mesh"
    name, k = f"{group}/{stem}", 2
    while name in taken:
        name, k = f"{group}/{stem}-{k}", k + 1
    return name


def render_object(mesh, object_dir, *, size: int, spp: int, seed: int, variant: str = "scalar_rgb") -> None:
    """Render one loaded mesh (``load_mesh``) into the GObjaverse layout at ``object_dir`` (written beside it,
    then renamed into place; an existing folder there is replaced)."""
    from geolrm_jax.data import gobjaverse_io, synthetic

    mi = _mitsuba(variant)
    shape = mitsuba_shape(mi, mesh)
    c2ws, Ks = synthetic.gobjaverse_layout(np.random.default_rng(seed))
    object_dir = pathlib.Path(object_dir)
    object_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{object_dir.name}.", suffix=".partial", dir=object_dir.parent))
    try:
        for v, (c2w, K) in enumerate(zip(c2ws, Ks, strict=True)):
            rgba, depth, normal = render_view(mi, shape, c2w, K, size, spp, seed=seed * 64 + v)
            gobjaverse_io.write_view(str(tmp), v, rgba, normal, depth, c2w, K)
        tmp.chmod(0o755)
        if object_dir.exists():
            shutil.rmtree(object_dir)
        tmp.rename(object_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: pathlib.Path, content) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(content, indent=1))
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geolrm-jax data render", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="mesh files (.glb .gltf .obj .ply .stl .off) or folders of them")
    p.add_argument("-o", "--output", required=True, help="layout root to write (<root>/<group>/<name>/...)")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (square; GObjaverse: 512)")
    p.add_argument("--spp", type=int, default=64, help="samples per pixel of the colour pass")
    p.add_argument("--seed", type=int, default=0, help="camera layout seed (object i uses seed + i)")
    p.add_argument("--group", default="user", help="first part of the object names")
    p.add_argument("--validation", type=int, default=0, help="put the last N objects in the validation split")
    p.add_argument("--up", choices=["auto", "y", "z"], default="auto",
                   help="the files' up axis (auto: y for glTF/OBJ, z otherwise)")
    p.add_argument("--extent", type=float, default=1.0, help="longest side after normalization")
    p.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES)
    p.add_argument("--allow-non-manifold", action="store_true", help="render meshes with non-manifold edges")
    p.add_argument("--overwrite", action="store_true", help="re-render objects that exist already")
    p.add_argument("--variant", default="scalar_rgb", help="Mitsuba variant (scalar_rgb, llvm_ad_rgb, ...)")
    return p


def run(args) -> dict:
    """Render every mesh; returns {"rendered": [names], "skipped": [names], "errors": [{"file", "error"}]}."""
    if args.size < 8 or args.spp < 1 or not 0 < args.extent <= 1.2:
        raise MeshInputError(f"--size {args.size} must be >= 8, --spp {args.spp} >= 1 and --extent {args.extent} "
                             "in (0, 1.2] (the objects must fit the cameras' view)")
    files = find_meshes(args.inputs)
    if not files:
        raise MeshInputError(f"no mesh files ({', '.join(MESH_SUFFIXES)}) in {', '.join(args.inputs)}")
    _mitsuba(args.variant)  # fail early on a missing extra or a bad variant
    root = pathlib.Path(args.output)
    root.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    result: dict = {"rendered": [], "skipped": [], "errors": []}
    for i, path in enumerate(files):
        name = object_name(path, args.group, set(names))
        start = time.perf_counter()
        if (root / name).is_dir() and not args.overwrite:
            print(f"[{i + 1}/{len(files)}] {path}: {name} exists, kept (--overwrite re-renders it)")
            names.append(name)
            result["skipped"].append(name)
            continue
        try:
            mesh = load_mesh(path, args.up, args.extent, args.max_faces, args.allow_non_manifold)
            render_object(mesh, root / name, size=args.size, spp=args.spp, seed=args.seed + i, variant=args.variant)
        except MeshInputError as err:
            print(f"[{i + 1}/{len(files)}] error: {err}", file=sys.stderr)
            result["errors"].append({"file": str(path), "error": str(err)})
            continue
        except Exception as err:  # a renderer failure on one mesh must not stop the others
            print(f"[{i + 1}/{len(files)}] error: {path}: rendering failed: {err}", file=sys.stderr)
            result["errors"].append({"file": str(path), "error": f"{path}: rendering failed: {err}"})
            continue
        names.append(name)
        result["rendered"].append(name)
        print(f"[{i + 1}/{len(files)}] {path} -> {root / name} ({len(mesh.faces)} faces, "
              f"{time.perf_counter() - start:.1f} s)", flush=True)
    _write_object_list(root, names, args.validation)
    _write_json(root / "render_errors.json", result["errors"])
    return result


def _write_object_list(root: pathlib.Path, names: list[str], validation: int) -> None:
    """Merge ``names`` into ``root/object_list.json`` (other objects listed there stay where they are)."""
    path = root / "object_list.json"
    listed = {"train": [], "validation": []}
    if path.exists():
        from geolrm_jax.data import gobjaverse_io

        listed.update(gobjaverse_io.read_object_list(path))
    known = {n for split in listed.values() for n in split}
    new = [n for n in names if n not in known]
    n_val = min(max(validation, 0), len(new))
    listed["train"] += new[: len(new) - n_val]
    listed["validation"] += new[len(new) - n_val:]
    _write_json(path, listed)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (MeshInputError, ImportError) as err:
        print(f"geolrm-jax data render: error: {err}", file=sys.stderr)
        return 2
    done, bad = len(result["rendered"]) + len(result["skipped"]), len(result["errors"])
    print(f"{done} objects in {args.output} ({len(result['skipped'])} kept from before), {bad} failed"
          + (f" (see {pathlib.Path(args.output) / 'render_errors.json'})" if bad else ""))
    print(f"next: geolrm-jax data build --root {args.output} --data-dir TFDS_DIR")
    return 1 if bad else 0
