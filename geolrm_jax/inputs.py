"""Readers for the inputs of ``geolrm-jax reconstruct``: posed images, SV3D orbits, Zero123++ grids.

Every reader returns a ``ViewSet``: ``images`` (V, S, S, 3) float32 in [0, 1] (RGBA composited on white, resized
to S x S with antialiased bicubic filtering), ``c2w`` (V, 4, 4) OpenGL camera-to-world (z-up world), ``K``
(V, 3, 3) intrinsics normalized by the image size, and ``sources`` (V strings naming where each view came from).
Cameras follow ``geolrm_jax.geometry``.

Input kinds
-----------
``posed``: a folder with images and a cameras file, either

* ``cameras.json`` (this project's format)::

      {"frames": [{"file": "000.png", "c2w": [[4 x 4]], "K": [[3 x 3]]}, ...]}

  ``file`` is relative to the JSON's folder; ``c2w`` is camera-to-world with OpenGL axes (x right, y up, looking
  down -z); ``K`` is normalized (fx = 0.5 / tan(fov_x / 2), cx = cy = 0.5 for a centred principal point).
  A top-level ``"K"`` is used for frames without their own.
* ``transforms.json`` (NeRF/instant-ngp): ``frames[i].file_path`` (the extension may be omitted, as in the NeRF
  synthetic scenes) and ``frames[i].transform_matrix`` (OpenGL camera-to-world); intrinsics from
  ``camera_angle_x`` (and optional ``camera_angle_y``) or from ``fl_x``/``fl_y``/``cx``/``cy`` with ``w``/``h``,
  top-level or per frame.

  Every image file in the folder must have a camera, and every camera an image.
``sv3d``: an SV3D 21-frame orbit as a video file or a folder of 21 frames (sorted by name), with the preset
  cameras ``geometry.sv3d_cameras()`` (azimuth 0..360 exclusive, elevation 10 deg, fov 39.6 deg).
``zero123pp``: a Zero123++ v1.2 grid image, 3 rows x 2 columns of square tiles (960 x 640 for 320 px tiles),
  views taken row by row, with the preset cameras ``geometry.zero123pp_cameras()`` (fov 30 deg).

The presets place the camera at the radius given by ``radius`` (default 1.5, what the original's
``run_geolrm.py`` and ``run_geolrm_zero123.py`` pass; the Zero123++ preset itself is defined at radius 4).

Errors: ``InputError`` (a ``ValueError``) naming the file: unreadable image, image without a camera (or a camera
without an image), wrong number of views or frames, non-square image or tile, image smaller than
``MIN_IMAGE_SIZE``, malformed camera file, no camera looking at the object box. Cameras that miss the object box
[-0.5, 0.5]^3 or see it very small are reported on stderr as warnings (``camera_warnings``).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import sys
from typing import NamedTuple

import numpy as np

from geolrm_jax import geometry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
CAMERA_FILES = ("cameras.json", "transforms.json")
INPUT_KINDS = ("auto", "posed", "sv3d", "zero123pp")
SV3D_FRAMES = 21
ZERO123PP_ROWS, ZERO123PP_COLS = 3, 2
# The original's 4-view subset of the Zero123++ grid (run_geolrm_zero123.py, --view 4).
ZERO123PP_FOUR_VIEWS = (0, 2, 4, 5)
MIN_IMAGE_SIZE = 8  # px; smaller images (e.g. 1x1) carry no object to reconstruct
OBJECT_HALF_EXTENT = 0.5  # the model reconstructs inside [-0.5, 0.5]^3
MIN_OBJECT_SPAN = 0.25  # warn when the object box spans less than this fraction of every image


class InputError(ValueError):
    """A bad input; the message names the offending file."""


class ViewSet(NamedTuple):
    images: np.ndarray  # (V, S, S, 3) float32 in [0, 1]
    c2w: np.ndarray  # (V, 4, 4) float32
    K: np.ndarray  # (V, 3, 3) float32
    sources: tuple[str, ...]


def composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 4) or (H, W, 3) float in [0, 1] -> (H, W, 3): rgb * a + (1 - a)."""
    if pixels.shape[-1] == 3:
        return pixels
    rgb, alpha = pixels[..., :3], pixels[..., 3:4]
    return rgb * alpha + (1.0 - alpha)


def _pil_to_float(img, source: str) -> np.ndarray:
    """A PIL image -> (H, W, 3) float32 in [0, 1], composited on white when it has alpha."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(img, np.float32) / 65535.0
        return np.repeat(gray[..., None], 3, -1)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    arr = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), np.float32) / 255.0
    if arr.ndim != 3:
        raise InputError(f"{source}: unsupported image layout {arr.shape}")
    return composite_on_white(arr).astype(np.float32)


def read_image(path) -> np.ndarray:
    """Read an image file -> (H, W, 3) float32 in [0, 1], RGBA composited on white."""
    from PIL import Image, UnidentifiedImageError

    path = pathlib.Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_float(img, str(path))
    except InputError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"{path}: cannot read image: {err}") from err
    except Exception as err:  # Pillow's decoders raise SyntaxError, struct.error, DecompressionBombError, ...
        raise InputError(f"{path}: cannot read image: {type(err).__name__}: {err}") from err


def resize_square(image: np.ndarray, size: int, source: str = "image") -> np.ndarray:
    """Resize a square (H, H, 3) float image to (size, size, 3), antialiased bicubic, clipped to [0, 1]."""
    from PIL import Image

    h, w = image.shape[:2]
    if h != w:
        raise InputError(f"{source}: image must be square, got {w}x{h} (width x height)")
    if h < MIN_IMAGE_SIZE:
        raise InputError(f"{source}: image is {w}x{h} px; at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} are needed")
    if size < 1:
        raise InputError(f"{source}: cannot resize to {size} px")
    if h == size:
        return image.astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F").resize(
            (size, size), Image.BICUBIC))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, -1), 0.0, 1.0).astype(np.float32)


def _matrix(value, shape, source: str, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError, OverflowError) as err:
        raise InputError(f"{source}: field '{field}' is not a numeric matrix: {err}") from err
    if arr.shape != shape:
        raise InputError(f"{source}: field '{field}' must have shape {shape}, got {arr.shape}")
    return arr


def _load_json(path: pathlib.Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{path}: cannot read cameras JSON: {type(err).__name__}: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path}: expected an object with a non-empty list 'frames'")
    return meta


def read_cameras_json(path) -> tuple[list[pathlib.Path], np.ndarray, np.ndarray]:
    """Our cameras JSON -> (image paths, c2w (V, 4, 4), K (V, 3, 3)); see the module doc for the format."""
    path = pathlib.Path(path)
    meta = _load_json(path)
    files, c2ws, ks = [], [], []
    for i, frame in enumerate(meta["frames"]):
        where = f"{path} frames[{i}]"
        if not isinstance(frame, dict) or "file" not in frame or "c2w" not in frame:
            raise InputError(f"{where}: each frame needs 'file' and 'c2w'")
        if "K" not in frame and "K" not in meta:
            raise InputError(f"{where}: no 'K' in the frame and no top-level 'K'")
        files.append(path.parent / _file_name(frame["file"], where, "file"))
        c2ws.append(_matrix(frame["c2w"], (4, 4), where, "c2w"))
        ks.append(_matrix(frame.get("K", meta.get("K")), (3, 3), where, "K"))
    c2w, K = np.stack(c2ws), np.stack(ks)
    _validate(c2w, K, path)
    return files, c2w.astype(np.float32), K.astype(np.float32)


def _file_name(value, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InputError(f"{where}: field '{field}' must be a file name, got {value!r:.80}")
    return value


def _validate(c2w: np.ndarray, K: np.ndarray, path: pathlib.Path) -> None:
    try:
        geometry.validate_cameras(c2w, K, source=str(path))
    except ValueError as err:
        raise InputError(str(err)) from err


def write_cameras_json(path, files, c2w, K) -> None:
    """Write our cameras JSON (the inverse of ``read_cameras_json``); ``files`` relative to its folder."""
    frames = [{"file": str(f), "c2w": np.asarray(m).tolist(), "K": np.asarray(k).tolist()}
              for f, m, k in zip(files, c2w, K, strict=True)]
    pathlib.Path(path).write_text(json.dumps({"frames": frames}, indent=1))


def _nerf_intrinsics(meta: dict, frame: dict, where: str, image_hw: tuple[int, int]) -> np.ndarray:
    get = lambda key: frame.get(key, meta.get(key))
    h, w = image_hw
    if get("fl_x") is not None:
        w_ref, h_ref = float(get("w") or w), float(get("h") or h)
        fx = float(get("fl_x")) / w_ref
        fy = float(get("fl_y") if get("fl_y") is not None else get("fl_x")) / h_ref
        cx = float(get("cx")) / w_ref if get("cx") is not None else 0.5
        cy = float(get("cy")) / h_ref if get("cy") is not None else 0.5
    elif get("camera_angle_x") is not None:
        fx = 0.5 / math.tan(float(get("camera_angle_x")) / 2)
        # Square pixels: fy in pixels equals fx in pixels.
        fy = (0.5 / math.tan(float(get("camera_angle_y")) / 2) if get("camera_angle_y") is not None
              else fx * w / h)
        cx = cy = 0.5
    else:
        raise InputError(f"{where}: no intrinsics (need 'camera_angle_x' or 'fl_x')")
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)


def _resolve_nerf_image(folder: pathlib.Path, file_path: str, where: str) -> pathlib.Path:
    try:
        candidate = (folder / file_path).resolve()
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            return candidate
        for suffix in IMAGE_SUFFIXES:
            with_suffix = candidate.with_name(candidate.name + suffix)
            if with_suffix.exists():
                return with_suffix
    except (OSError, ValueError) as err:  # e.g. a name too long for the file system
        raise InputError(f"{where}: image '{file_path:.80}' cannot be looked up: {err}") from err
    raise InputError(f"{where}: image '{file_path:.80}' not found in {folder}")


def read_transforms_json(path) -> tuple[list[pathlib.Path], np.ndarray, np.ndarray]:
    """NeRF ``transforms.json`` -> (image paths, c2w (V, 4, 4), K (V, 3, 3) normalized)."""
    path = pathlib.Path(path)
    meta = _load_json(path)
    files, c2ws, ks = [], [], []
    for i, frame in enumerate(meta["frames"]):
        where = f"{path} frames[{i}]"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise InputError(f"{where}: each frame needs 'file_path' and 'transform_matrix'")
        image_path = _resolve_nerf_image(path.parent, _file_name(frame["file_path"], where, "file_path"), where)
        files.append(image_path)
        c2ws.append(_matrix(frame["transform_matrix"], (4, 4), where, "transform_matrix"))
        try:
            hw = (int(frame.get("h", meta.get("h", 0)) or 0), int(frame.get("w", meta.get("w", 0)) or 0))
            if not all(hw):
                hw = _image_hw(image_path)
            ks.append(_nerf_intrinsics(meta, frame, where, hw))
        except InputError:
            raise
        except (TypeError, ValueError, OverflowError, ZeroDivisionError) as err:  # non-numeric or zero fields
            raise InputError(f"{where}: bad intrinsics ({type(err).__name__}: {err})") from err
    c2w, K = np.stack(c2ws), np.stack(ks)
    _validate(c2w, K, path)
    return files, c2w.astype(np.float32), K.astype(np.float32)


def _image_hw(path: pathlib.Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"{path}: cannot read image: {err}") from err


def _check_view_count(count: int, max_views: int | None, source) -> None:
    if count < 1:
        raise InputError(f"{source}: no views")
    if max_views is not None and count > max_views:
        raise InputError(f"{source}: {count} views but the model takes at most {max_views}; "
                         f"pass --num-views to subsample")


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_posed_folder(folder, image_size: int, num_views: int | None = None,
                      max_views: int | None = None) -> ViewSet:
    """A folder of images with ``cameras.json`` or ``transforms.json`` (our format wins when both exist)."""
    folder = pathlib.Path(folder)
    camera_file = next((folder / name for name in CAMERA_FILES if (folder / name).exists()), None)
    if camera_file is None:
        raise InputError(f"{folder}: no {' or '.join(CAMERA_FILES)} found")
    reader = read_cameras_json if camera_file.name == "cameras.json" else read_transforms_json
    files, c2w, K = reader(camera_file)
    listed = {f.resolve() for f in files}
    for image in _image_files(folder):
        if image.resolve() not in listed:
            raise InputError(f"{image}: image has no camera in {camera_file}")
    for f in files:
        try:
            found = f.is_file()
        except OSError as err:
            raise InputError(f"{str(f):.200}: listed in {camera_file} but cannot be looked up: {err}") from err
        if not found:
            raise InputError(f"{str(f):.200}: listed in {camera_file} but the file does not exist")
    index = select_view_indices(len(files), num_views, camera_file)
    _check_view_count(len(index), max_views, camera_file)
    images = np.stack([resize_square(read_image(files[i]), image_size, str(files[i])) for i in index])
    return ViewSet(images, c2w[index], K[index], tuple(str(files[i]) for i in index))


def select_view_indices(count: int, num_views: int | None, source) -> np.ndarray:
    """``num_views`` indices spread evenly over ``count`` views (all of them when ``num_views`` is None)."""
    if num_views is None:
        return np.arange(count)
    if not 1 <= num_views <= count:
        raise InputError(f"{source}: asked for {num_views} views but the input has {count}")
    return np.floor(np.arange(num_views) * (count / num_views)).astype(np.int64)


def preset_cameras(name: str, radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``geometry`` preset cameras ('sv3d' or 'zero123pp') -> numpy (c2w, K), optionally moved to ``radius``."""
    cams = geometry.CAMERA_PRESETS[name]()
    c2w, K = np.array(cams.c2w, np.float32), np.array(cams.K, np.float32)
    if radius is not None:
        centres = c2w[:, :3, 3]
        c2w[:, :3, 3] = centres / np.linalg.norm(centres, axis=-1, keepdims=True) * radius
    return c2w, K


def _split_ppm_stream(data: bytes, source: str) -> list[np.ndarray]:
    """Concatenated binary PPMs (``P6 W H 255``, as ffmpeg's ``image2pipe`` writes them) -> (H, W, 3) uint8."""
    frames, pos, header = [], 0, re.compile(rb"P6\s+(\d+)\s+(\d+)\s+(\d+)\s")
    while pos < len(data):
        match = header.match(data, pos)
        if match is None or int(match.group(3)) != 255:
            raise InputError(f"{source}: cannot read video: unexpected frame data from ffmpeg")
        w, h = int(match.group(1)), int(match.group(2))
        start, end = match.end(), match.end() + w * h * 3
        if end > len(data):
            raise InputError(f"{source}: cannot read video: truncated frame from ffmpeg")
        frames.append(np.frombuffer(data, np.uint8, w * h * 3, start).reshape(h, w, 3))
        pos = end
    return frames


def read_video_frames(path) -> np.ndarray:
    """All frames of a video/GIF -> (T, H, W, 3) float32 in [0, 1], alpha composited on white.

    Videos are decoded by the ffmpeg of imageio-ffmpeg (``export.run_ffmpeg``, which spawns it without forking
    the JAX process), GIFs by Pillow.
    """
    import imageio.v3 as iio

    from geolrm_jax import export

    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    try:
        if path.suffix.lower() == ".gif":
            frames = np.asarray(iio.imread(path, index=None, plugin="pillow"))
        else:
            data = export.run_ffmpeg(["-i", os.fspath(path), "-f", "image2pipe", "-c:v", "ppm",
                                      "-pix_fmt", "rgb24", "-"], source=str(path))
            frames = _split_ppm_stream(data, str(path))
            if not frames:
                raise InputError(f"{path}: cannot read video: no frames")
            if len({f.shape for f in frames}) != 1:
                raise InputError(f"{path}: cannot read video: frame size changes within the video")
            frames = np.stack(frames)
    except InputError:
        raise
    except Exception as err:  # Pillow and ffmpeg fail in many ways on unreadable files
        raise InputError(f"{path}: cannot read video: {err}") from err
    if frames.ndim == 3:
        frames = frames[..., None].repeat(3, -1)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise InputError(f"{path}: expected (T, H, W, 3|4) frames, got {frames.shape}")
    scale = 65535.0 if frames.dtype == np.uint16 else 255.0
    return composite_on_white(frames.astype(np.float32) / scale).astype(np.float32)


def read_sv3d(path, image_size: int, num_views: int | None = None, max_views: int | None = None,
              radius: float = 1.5) -> ViewSet:
    """An SV3D orbit (video file or folder of 21 frames) with the preset cameras."""
    path = pathlib.Path(path)
    if path.is_dir():
        files = _image_files(path)
        if len(files) != SV3D_FRAMES:
            raise InputError(f"{path}: an SV3D orbit has {SV3D_FRAMES} frames, found {len(files)} images")
        frames = [read_image(f) for f in files]
        sources = [str(f) for f in files]
    else:
        frames = list(read_video_frames(path))
        if len(frames) != SV3D_FRAMES:
            raise InputError(f"{path}: an SV3D orbit has {SV3D_FRAMES} frames, the video has {len(frames)}")
        sources = [f"{path}#frame{i}" for i in range(len(frames))]
    c2w, K = preset_cameras("sv3d", radius)
    index = select_view_indices(SV3D_FRAMES, num_views, path)
    _check_view_count(len(index), max_views, path)
    images = np.stack([resize_square(frames[i], image_size, sources[i]) for i in index])
    return ViewSet(images, c2w[index], K[index], tuple(sources[i] for i in index))


def split_zero123pp_grid(grid: np.ndarray, source: str = "grid") -> np.ndarray:
    """(3T, 2T, 3) grid -> (6, T, T, 3) tiles, row by row (the original's 'c (n h) (m w) -> (n m) c h w')."""
    h, w = grid.shape[:2]
    if h % ZERO123PP_ROWS or w % ZERO123PP_COLS or h // ZERO123PP_ROWS != w // ZERO123PP_COLS:
        raise InputError(f"{source}: a Zero123++ grid is {ZERO123PP_ROWS} rows x {ZERO123PP_COLS} columns of "
                         f"square tiles (e.g. 640x960 width x height), got {w}x{h}")
    t = h // ZERO123PP_ROWS
    tiles = grid.reshape(ZERO123PP_ROWS, t, ZERO123PP_COLS, t, 3).transpose(0, 2, 1, 3, 4)
    return tiles.reshape(ZERO123PP_ROWS * ZERO123PP_COLS, t, t, 3)


def read_zero123pp(path, image_size: int, num_views: int | None = None, max_views: int | None = None,
                   radius: float = 1.5) -> ViewSet:
    """A Zero123++ v1.2 6-view grid image with the preset cameras; ``num_views=4`` takes views 0, 2, 4, 5."""
    path = pathlib.Path(path)
    tiles = split_zero123pp_grid(read_image(path), str(path))
    if num_views == 4:
        index = np.asarray(ZERO123PP_FOUR_VIEWS)
    else:
        index = select_view_indices(len(tiles), num_views, path)
    _check_view_count(len(index), max_views, path)
    c2w, K = preset_cameras("zero123pp", radius)
    images = np.stack([resize_square(tiles[i], image_size, f"{path}#tile{i}") for i in index])
    return ViewSet(images, c2w[index], K[index], tuple(f"{path}#tile{i}" for i in index))


def detect_kind(path) -> str:
    """'posed' for a folder with a cameras file, 'sv3d' for a video or a folder of images without one,
    'zero123pp' for a single image."""
    path = pathlib.Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return "posed" if any((path / name).exists() for name in CAMERA_FILES) else "sv3d"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "sv3d"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "zero123pp"
    raise InputError(f"{path}: cannot tell the input kind from the suffix; pass --input-kind")


def camera_warnings(c2w: np.ndarray, K: np.ndarray, sources, where) -> list[str]:
    """Check that the cameras look at the object box [-0.5, 0.5]^3, the only place the model reconstructs.

    Raises ``InputError`` when no camera has the box in front of it and its centre (within the box's projected
    radius) in the image; returns warnings for single views that miss it, and for cameras so far away that the
    box spans less than ``MIN_OBJECT_SPAN`` of every image.
    """
    c2w, K = np.asarray(c2w, np.float64), np.asarray(K, np.float64)
    radius = OBJECT_HALF_EXTENT * math.sqrt(3.0)  # bounding sphere of the box
    centre_cam = np.linalg.inv(c2w)[:, :3, 3]  # the world origin in camera coordinates
    depth = -centre_cam[:, 2]  # OpenGL cameras look down -z
    safe = np.maximum(depth, 1e-9)
    u = K[:, 0, 0] * -centre_cam[:, 0] / safe + K[:, 0, 2]  # mirrored u, as geometry.project_points
    v = K[:, 1, 1] * -centre_cam[:, 1] / safe + K[:, 1, 2]
    span = np.minimum(2.0 * radius * np.minimum(K[:, 0, 0], K[:, 1, 1]) / safe, 1.0)
    inside = np.linalg.norm(centre_cam, axis=-1) <= radius  # a camera inside the bounding sphere sees part of it
    margin = span / 2
    sees = inside | ((depth > 0) & (np.abs(1.0 - u - 0.5) <= 0.5 + margin) & (np.abs(v - 0.5) <= 0.5 + margin))
    if not sees.any():
        raise InputError(f"{where}: no camera looks at the object box [-0.5, 0.5]^3, where the model "
                         "reconstructs (c2w must be OpenGL camera-to-world, looking down -z, with the object "
                         "at the origin)")
    warnings = []
    if not sees.all():
        missed = [str(sources[i]) for i in np.flatnonzero(~sees)]
        warnings.append(f"{where}: {len(missed)} of {len(sees)} views do not look at the object box "
                        f"[-0.5, 0.5]^3: {', '.join(missed[:4])}{' ...' if len(missed) > 4 else ''}")
    largest = float(np.where(inside, 1.0, np.where(sees, span, 0.0)).max())
    if largest < MIN_OBJECT_SPAN:
        distance = float(np.linalg.norm(c2w[:, :3, 3], axis=-1).min())
        warnings.append(f"{where}: the object box spans at most {100 * largest:.0f}% of any image (nearest "
                        f"camera {distance:.3g} from the origin); the model expects the object to fill the "
                        "view (cameras about 1.5-2.5 away), so expect an empty or poor result")
    return warnings


def load_views(path, image_size: int, kind: str = "auto", num_views: int | None = None,
               max_views: int | None = None, radius: float = 1.5, warn=None) -> ViewSet:
    """Read any supported input (see the module doc) -> ``ViewSet`` at ``image_size``.

    ``warn(message)`` receives the ``camera_warnings`` (default: printed to stderr as ``warning: ...``).
    """
    if kind not in INPUT_KINDS:
        raise InputError(f"{path}: unknown input kind {kind!r}; choose one of {INPUT_KINDS}")
    if image_size < 1:
        raise InputError(f"{path}: image size must be positive, got {image_size}")
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "posed":
        views = read_posed_folder(path, image_size, num_views, max_views)
    elif kind == "sv3d":
        views = read_sv3d(path, image_size, num_views, max_views, radius)
    else:
        views = read_zero123pp(path, image_size, num_views, max_views, radius)
    folder = pathlib.Path(path)
    where = next((folder / n for n in CAMERA_FILES if (folder / n).exists()), folder) if kind == "posed" else path
    for message in camera_warnings(views.c2w, views.K, views.sources, where):
        if warn is None:
            print(f"warning: {message}", file=sys.stderr)
        else:
            warn(message)
    return views
