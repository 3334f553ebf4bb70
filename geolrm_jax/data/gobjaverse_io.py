"""Reading and writing the GObjaverse on-disk layout, with the original GeoLRM's preprocessing.

Layout of one object (``<root>/<group>/<id>``, named ``"<group>/<id>"`` in the object list JSON)::

    <root>/<group>/<id>/<view:05d>/<view:05d>.png      RGBA, 8 bit
    <root>/<group>/<id>/<view:05d>/<view:05d>.json     camera: x, y, z, origin (OpenCV axes), x_fov, y_fov (rad)
    <root>/<group>/<id>/<view:05d>/<view:05d>_nd.exr   channels R, G, B = normal (Unity axes), A = depth

Views 0..23 are the orbit views (15 degrees apart in azimuth), the rest are random views.

Preprocessing as the original (``src/datasets/gobjaverse.py``):

* depth is the z-depth along the camera axis (the original unprojects it with rays whose camera-space z is
  -1); it is zeroed where it is below ``near = |camera centre| - 0.867`` (background is 0), the mask being
  dilated with a 3x3 kernel first, because depth edges are unreliable;
* normals: the original reads the EXR with OpenCV (channel order B, G, R, A) and maps Unity to Blender axes
  with ``(x, y, z) <- (-v[2], -v[0], v[1])`` on that order, i.e. Blender normal = (-R, -B, G) in terms of the
  named EXR channels; they are then normalized (background pixels with zero normal stay 0 here);
* images are composited later (in the input pipeline) on the example's background colour.

Every reader raises ``BadInputError`` naming the file and the problem (missing, truncated or corrupt file,
NaN, wrong size); callers skip the example and count it.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

NUM_ORBIT_VIEWS = 24
NUM_VIEWS = 40
NEAR_MARGIN = 0.867  # the original's sqrt(3) / 2, rounded up: no point of [-0.5, 0.5]^3 is nearer


class BadInputError(ValueError):
    """A file of the dataset is missing, unreadable or inconsistent; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def view_paths(object_dir: str | os.PathLike, view: int) -> dict[str, str]:
    """Paths of the PNG, camera JSON and normal-depth EXR of one view."""
    base = os.path.join(os.fspath(object_dir), f"{view:05d}", f"{view:05d}")
    return {"png": base + ".png", "json": base + ".json", "exr": base + "_nd.exr"}


def read_object_list(path: str | os.PathLike) -> dict[str, list[str]]:
    """Object-list JSON -> {split: [object names]}.

    The file holds either a list of ``"<group>/<id>"`` names (all in ``train``, as GObjaverse's
    ``gobjaverse_280k.json``) or a dict {split: [names]}.
    """
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or bad UTF-8
        raise BadInputError(path, f"cannot read object list: {type(err).__name__}: {err}") from err
    if isinstance(content, list):
        content = {"train": content}
    if not isinstance(content, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in content.values()
    ):
        raise BadInputError(path, "object list must be a list of names or a dict {split: [names]}")
    return {split: sorted(names) for split, names in content.items()}


# ---------------------------------------------------------------------------------------------------------
# PNG


def decode_png_rgba(data: bytes, source: str, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """PNG bytes -> (H, W, 4) uint8 RGBA; raises ``BadInputError`` on corrupt data, non-RGBA, wrong size."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode, size = im.mode, im.size
            array = np.asarray(im)
    except Exception as err:  # PIL raises many types for truncated/corrupt files
        raise BadInputError(source, f"corrupt or truncated PNG: {err}") from err
    if mode != "RGBA":
        raise BadInputError(source, f"expected an 8-bit RGBA PNG, got mode {mode}")
    if expected_hw is not None and array.shape[:2] != tuple(expected_hw):
        raise BadInputError(
            source, f"wrong image size {size[1]}x{size[0]} (HxW), expected {expected_hw[0]}x{expected_hw[1]}"
        )
    return array


def read_png_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise BadInputError(path, f"cannot read file: {err}") from err


def encode_png(array: np.ndarray) -> bytes:
    """(H, W, 4) uint8 or (H, W) uint16 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


DEPTH_CODE_MAX = 65535


def encode_depth(depth: np.ndarray) -> tuple[bytes, float]:
    """z-depth (H, W) -> (16-bit PNG of codes, scale) with depth = code * scale, scale = max / 65535."""
    scale = float(depth.max()) / DEPTH_CODE_MAX if depth.max() > 0 else 1.0
    codes = np.round(depth / scale).astype(np.uint16)
    return encode_png(codes), scale


def decode_depth(data: bytes, scale: float, source: str) -> np.ndarray:
    """Inverse of ``encode_depth`` -> (H, W) float32; raises BadInputError on corrupt data."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            codes = np.asarray(im)
    except Exception as err:
        raise BadInputError(source, f"corrupt depth PNG: {err}") from err
    if codes.ndim != 2:
        raise BadInputError(source, f"depth PNG must be single-channel, got shape {codes.shape}")
    return codes.astype(np.float32) * np.float32(scale)


# ---------------------------------------------------------------------------------------------------------
# EXR (normal + depth)


def read_nd_exr(path: str, expected_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``_nd.exr`` -> (raw normal (H, W, 3) as channels R, G, B; depth (H, W) = channel A), float32."""
    import OpenEXR

    if not os.path.exists(path):
        raise BadInputError(path, "file is missing")
    try:
        with OpenEXR.File(path, separate_channels=True) as f:
            channels = {name: np.asarray(ch.pixels, np.float32) for name, ch in f.channels().items()}
    except Exception as err:  # OpenEXR raises RuntimeError for truncated/corrupt files
        raise BadInputError(path, f"corrupt or truncated EXR: {err}") from err
    missing = [c for c in "RGBA" if c not in channels]
    if missing:
        raise BadInputError(path, f"EXR lacks channels {missing} (has {sorted(channels)})")
    normal = np.stack([channels["R"], channels["G"], channels["B"]], -1)
    depth = channels["A"]
    if expected_hw is not None and depth.shape != tuple(expected_hw):
        raise BadInputError(path, f"wrong EXR size {depth.shape}, expected {tuple(expected_hw)}")
    if not np.all(np.isfinite(depth)):
        raise BadInputError(path, f"depth has {int(np.sum(~np.isfinite(depth)))} non-finite values")
    if not np.all(np.isfinite(normal)):
        raise BadInputError(path, f"normals have {int(np.sum(~np.isfinite(normal)))} non-finite values")
    return normal, depth


def write_nd_exr(path: str, normal_blender: np.ndarray, depth: np.ndarray) -> None:
    """Write Blender-axes normals (H, W, 3) and z-depth (H, W) as GObjaverse's ``_nd.exr`` (inverse of the
    reader's axis conversion: R = -n_x, G = n_z, B = -n_y)."""
    import OpenEXR

    n = np.asarray(normal_blender, np.float32)
    channels = {
        "R": np.ascontiguousarray(-n[..., 0]),
        "G": np.ascontiguousarray(n[..., 2]),
        "B": np.ascontiguousarray(-n[..., 1]),
        "A": np.ascontiguousarray(depth, np.float32),
    }
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, channels) as f:
        f.write(path)


def unity_to_blender_normals(raw_rgb: np.ndarray) -> np.ndarray:
    """Raw EXR normals (..., 3) in channel order R, G, B -> unit Blender-axes normals (0 where the raw is 0)."""
    n = np.stack([-raw_rgb[..., 0], -raw_rgb[..., 2], raw_rgb[..., 1]], -1)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 0, n / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def dilate3x3(mask: np.ndarray) -> np.ndarray:
    """Binary dilation of (H, W) bool with a 3x3 square (pixels outside the image count as False)."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def clean_depth(depth: np.ndarray, camera_distance: float) -> np.ndarray:
    """Zero the depth below ``camera_distance - 0.867`` (background included), dilating that mask by 3x3."""
    invalid = dilate3x3(depth < camera_distance - NEAR_MARGIN)
    return np.where(invalid, 0.0, depth).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Cameras


def camera_to_gobjaverse_dict(c2w: np.ndarray, K: np.ndarray) -> dict:
    """OpenGL c2w (4, 4) and normalized K (3, 3) -> GObjaverse camera dict (inverse of
    ``geometry.gobjaverse_camera_from_dict``): x = c2w[:, 0], y = -c2w[:, 1], z = -c2w[:, 2]."""
    c2w = np.asarray(c2w, np.float64)
    K = np.asarray(K, np.float64)
    return {
        "x": c2w[:3, 0].tolist(),
        "y": (-c2w[:3, 1]).tolist(),
        "z": (-c2w[:3, 2]).tolist(),
        "origin": c2w[:3, 3].tolist(),
        "x_fov": 2.0 * math.atan(0.5 / K[0, 0]),
        "y_fov": 2.0 * math.atan(0.5 / K[1, 1]),
    }


# ---------------------------------------------------------------------------------------------------------
# One view / one object


class View(NamedTuple):
    """One preprocessed view: ``png`` the file's bytes (validated RGBA), ``rgba`` (H, W, 4) uint8,
    ``depth`` (H, W) float32 cleaned z-depth, ``normal`` (H, W, 3) Blender axes, ``c2w`` (4, 4), ``K`` (3, 3)."""

    png: bytes
    rgba: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    c2w: np.ndarray
    K: np.ndarray


def read_view(object_dir: str, view: int, expected_hw: tuple[int, int] | None = None) -> View:
    """Read and preprocess one view; raises ``BadInputError`` naming the offending file."""
    from geolrm_jax import geometry  # imports jax: keep it out of the pipeline's worker processes

    paths = view_paths(object_dir, view)
    if not os.path.exists(paths["json"]):
        raise BadInputError(paths["json"], "file is missing")
    try:
        c2w, K = geometry.read_gobjaverse_camera(paths["json"])
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as err:  # malformed JSON content
        raise BadInputError(paths["json"], f"bad camera: {type(err).__name__}: {err}") from err
    if not os.path.exists(paths["png"]):
        raise BadInputError(paths["png"], "file is missing")
    png = read_png_bytes(paths["png"])
    rgba = decode_png_rgba(png, paths["png"], expected_hw)
    raw_normal, depth = read_nd_exr(paths["exr"], rgba.shape[:2])
    depth = clean_depth(depth, float(np.linalg.norm(c2w[:3, 3])))
    return View(png, rgba, depth, unity_to_blender_normals(raw_normal), c2w, K)


def read_object(
    object_dir: str, num_views: int = NUM_VIEWS, image_size: int | None = None
) -> list[View]:
    """All views of one object; ``image_size`` (square) is checked when given, else taken from view 0."""
    if not os.path.isdir(object_dir):
        raise BadInputError(object_dir, "object directory is missing")
    expected = None if image_size is None else (image_size, image_size)
    views = []
    for v in range(num_views):
        view = read_view(object_dir, v, expected)
        expected = view.rgba.shape[:2]
        views.append(view)
    return views


def write_view(object_dir: str, view: int, rgba: np.ndarray, normal: np.ndarray, depth: np.ndarray,
               c2w: np.ndarray, K: np.ndarray) -> None:
    """Write one view in the GObjaverse layout (RGBA uint8, Blender normals, z-depth, OpenGL camera)."""
    paths = view_paths(object_dir, view)
    os.makedirs(os.path.dirname(paths["png"]), exist_ok=True)
    with open(paths["png"], "wb") as f:
        f.write(encode_png(np.asarray(rgba, np.uint8)))
    with open(paths["json"], "w") as f:
        json.dump(camera_to_gobjaverse_dict(c2w, K), f)
    write_nd_exr(paths["exr"], normal, depth)


def composite(rgba: np.ndarray, size: int, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGBA (H, W, 4) -> (RGB (size, size, 3) on ``background`` (3,), alpha (size, size)), float32: how
    training (inputs and targets) and ``geolrm-jax eval`` composite a view.

    The resize works on 8-bit premultiplied colour (PIL "RGBa"), so rgb = premultiplied colour
    + (1 - alpha) * background holds exactly and empty pixels are exactly the background.
    """
    im = Image.fromarray(rgba, "RGBA").convert("RGBa")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    premult = np.asarray(im, np.float32) * np.float32(1 / 255)
    alpha = premult[..., 3]
    rgb = premult[..., :3] + (1 - alpha)[..., None] * np.asarray(background, np.float32)
    return rgb, alpha
