"""Exports of predicted Gaussians: 3DGS ``.ply``, antimatter15 ``.splat``, turntable video, image files.

All functions take Gaussians of ONE scene: any object with the fields of
``geolrm_jax.render.gaussians.Gaussians`` (means (N, 3), scales (N, 3) activated sigma, quats (N, 4) w-first,
opacities (N,) in (0, 1), rgbs (N, 3) in [0, 1]); a leading batch axis of size 1 is accepted and dropped.
Gaussians with opacity below ``min_opacity`` (default 0.005, the original's pruning threshold) are dropped,
which also removes padding (opacity 0).

PLY formats
-----------
``standard`` (default), what 3DGS viewers (SuperSplat, antimatter15, gsplat, the Inria SIBR viewer) read:

* ``x y z`` means, ``nx ny nz`` zeros;
* ``f_dc_0..2`` = (rgb - 0.5) / C0 with C0 = 0.28209479177387814 (degree-0 spherical harmonic), so a viewer's
  ``0.5 + C0 * f_dc`` gives back the RGB colour; optionally ``f_rest_0..44`` zeros (``sh_rest=True``) for viewers
  that insist on degree-3 SH;
* ``opacity`` = logit(opacity), ``scale_0..2`` = log(sigma), ``rot_0..3`` = unit quaternion, w first.

``original``: what GeoLRM's ``GaussianRenderer.save_ply`` writes: ``x y z f_dc_0..2 opacity scale_0..2
rot_0..3`` holding the raw activated values (rgb in [0, 1], opacity in (0, 1), sigma, unit quaternion). Viewers
misread those (they apply exp / sigmoid / SH), so use it only for tools written against the original.

``.splat`` (antimatter15/splat): no header, 32 bytes per Gaussian, little endian: position float32[3], scale
float32[3] (linear sigma), colour uint8[4] (RGB, opacity), rotation uint8[4] (unit quaternion w-first, mapped
q * 128 + 128 and clipped to [0, 255]); sorted by decreasing ``prod(sigma) * opacity``.
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import numpy as np

SH_C0 = 0.28209479177387814
PLY_FORMATS = ("standard", "original")
DEFAULT_MIN_OPACITY = 0.005


class GaussianArrays(NamedTuple):
    """Host copy of one scene's Gaussians, float32 numpy; fields as ``render.gaussians.Gaussians``."""

    means: np.ndarray  # (N, 3)
    scales: np.ndarray  # (N, 3) activated sigma
    quats: np.ndarray  # (N, 4) w first
    opacities: np.ndarray  # (N,)
    rgbs: np.ndarray  # (N, 3) in [0, 1]


def to_numpy_gaussians(gaussians, min_opacity: float = DEFAULT_MIN_OPACITY) -> GaussianArrays:
    """One scene's Gaussians as float32 numpy arrays, dropping those with opacity < ``min_opacity``.

    Accepts a leading batch axis of size 1. Raises ``ValueError`` on inconsistent shapes or non-finite values.
    """
    fields = {}
    for name, trailing in (("means", 3), ("scales", 3), ("quats", 4), ("opacities", None), ("rgbs", 3)):
        value = np.asarray(getattr(gaussians, name), dtype=np.float32)
        ndim = 1 if trailing is None else 2
        while value.ndim > ndim and value.shape[0] == 1:
            value = value[0]
        if value.ndim == ndim + 1 and trailing is None and value.shape[-1] == 1:
            value = value[..., 0]
        if value.ndim != ndim or (trailing is not None and value.shape[-1] != trailing):
            want = "(N,)" if trailing is None else f"(N, {trailing})"
            raise ValueError(f"Gaussians.{name}: expected one scene of shape {want}, got {value.shape}")
        fields[name] = value
    n = fields["means"].shape[0]
    for name, value in fields.items():
        if value.shape[0] != n:
            raise ValueError(f"Gaussians.{name} has {value.shape[0]} entries but means has {n}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"Gaussians.{name} has non-finite values")
    keep = fields["opacities"] >= min_opacity
    return GaussianArrays(**{name: value[keep] for name, value in fields.items()})


def _normalized_quats(quats: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(quats, axis=-1, keepdims=True)
    safe = np.where(norm > 0, quats / np.maximum(norm, 1e-12), np.array([1.0, 0, 0, 0], np.float32))
    return safe.astype(np.float32)


def ply_vertex_array(g: GaussianArrays, ply_format: str = "standard", sh_rest: bool = False) -> np.ndarray:
    """The PLY ``vertex`` element of ``g`` as a structured float32 array (fields named as in the module doc)."""
    if ply_format not in PLY_FORMATS:
        raise ValueError(f"unknown ply format {ply_format!r}; choose one of {PLY_FORMATS}")
    n = g.means.shape[0]
    columns: list[tuple[str, np.ndarray]] = [(axis, g.means[:, i]) for i, axis in enumerate("xyz")]
    if ply_format == "standard":
        eps = 1e-6
        columns += [(f"n{axis}", np.zeros(n, np.float32)) for axis in "xyz"]
        f_dc = (g.rgbs - 0.5) / SH_C0
        columns += [(f"f_dc_{i}", f_dc[:, i]) for i in range(3)]
        if sh_rest:
            columns += [(f"f_rest_{i}", np.zeros(n, np.float32)) for i in range(45)]
        p = np.clip(g.opacities.astype(np.float64), eps, 1 - eps)
        columns.append(("opacity", np.log(p / (1 - p))))
        log_scales = np.log(np.maximum(g.scales, 1e-12))
        columns += [(f"scale_{i}", log_scales[:, i]) for i in range(3)]
        quats = _normalized_quats(g.quats)
    else:
        columns += [(f"f_dc_{i}", g.rgbs[:, i]) for i in range(3)]
        columns.append(("opacity", g.opacities))
        columns += [(f"scale_{i}", g.scales[:, i]) for i in range(3)]
        quats = g.quats  # the original writes its already-normalized quaternion as is
    columns += [(f"rot_{i}", quats[:, i]) for i in range(4)]
    vertex = np.empty(n, dtype=[(name, "<f4") for name, _ in columns])
    for name, value in columns:
        vertex[name] = value
    return vertex


def write_ply(path, gaussians, ply_format: str = "standard", *, min_opacity: float = DEFAULT_MIN_OPACITY,
              sh_rest: bool = False) -> int:
    """Write a binary little-endian 3DGS PLY; returns the number of Gaussians written."""
    from plyfile import PlyData, PlyElement

    g = to_numpy_gaussians(gaussians, min_opacity)
    vertex = ply_vertex_array(g, ply_format, sh_rest)
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(os.fspath(path))
    return vertex.shape[0]


def read_ply(path, ply_format: str = "standard") -> GaussianArrays:
    """Read a PLY written by ``write_ply`` (or any 3DGS PLY in the given format) back to activated values."""
    from plyfile import PlyData

    try:
        vertex = PlyData.read(os.fspath(path))["vertex"]
    except Exception as err:  # plyfile raises several types for malformed files
        raise ValueError(f"{path}: cannot read PLY: {err}") from err
    names = {p.name for p in vertex.properties}
    need = [*"xyz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", *(f"scale_{i}" for i in range(3)),
            *(f"rot_{i}" for i in range(4))]
    missing = [name for name in need if name not in names]
    if missing:
        raise ValueError(f"{path}: PLY vertex lacks properties {missing}")
    col = lambda *keys: np.stack([np.asarray(vertex[k], np.float32) for k in keys], -1)
    means = col("x", "y", "z")
    f_dc = col("f_dc_0", "f_dc_1", "f_dc_2")
    opacity = np.asarray(vertex["opacity"], np.float64)
    scales = col("scale_0", "scale_1", "scale_2")
    quats = col("rot_0", "rot_1", "rot_2", "rot_3")
    if ply_format == "standard":
        rgbs = 0.5 + SH_C0 * f_dc
        opacity = 1.0 / (1.0 + np.exp(-opacity))
        scales = np.exp(scales)
    elif ply_format == "original":
        rgbs = f_dc
    else:
        raise ValueError(f"unknown ply format {ply_format!r}; choose one of {PLY_FORMATS}")
    return GaussianArrays(means, scales.astype(np.float32), quats, opacity.astype(np.float32),
                          rgbs.astype(np.float32))


SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def splat_bytes(gaussians, *, min_opacity: float = DEFAULT_MIN_OPACITY) -> bytes:
    """The antimatter15 ``.splat`` encoding of one scene (see the module doc)."""
    g = to_numpy_gaussians(gaussians, min_opacity)
    importance = np.prod(g.scales.astype(np.float64), axis=-1) * g.opacities
    order = np.argsort(-importance, kind="stable")
    records = np.empty(order.shape[0], SPLAT_DTYPE)
    records["position"] = g.means[order]
    records["scale"] = g.scales[order]
    rgba = np.concatenate([g.rgbs[order], g.opacities[order, None]], -1)
    records["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
    quats = _normalized_quats(g.quats[order])
    records["rot"] = np.clip(np.round(quats * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return records.tobytes()


def write_splat(path, gaussians, *, min_opacity: float = DEFAULT_MIN_OPACITY) -> int:
    """Write a ``.splat`` file; returns the number of Gaussians written."""
    data = splat_bytes(gaussians, min_opacity=min_opacity)
    pathlib.Path(path).write_bytes(data)
    return len(data) // SPLAT_DTYPE.itemsize


def read_splat(path) -> GaussianArrays:
    """Decode a ``.splat`` file (quantized colour, opacity and rotation)."""
    raw = pathlib.Path(path).read_bytes()
    if len(raw) % SPLAT_DTYPE.itemsize:
        raise ValueError(f"{path}: size {len(raw)} is not a multiple of {SPLAT_DTYPE.itemsize} bytes")
    records = np.frombuffer(raw, SPLAT_DTYPE)
    rgba = records["rgba"].astype(np.float32) / 255.0
    quats = (records["rot"].astype(np.float32) - 128.0) / 128.0
    return GaussianArrays(records["position"].copy(), records["scale"].copy(), quats, rgba[:, 3], rgba[:, :3])


def to_uint8(images) -> np.ndarray:
    """Float images in [0, 1] (any shape ending in 3) -> uint8, rounding and clipping."""
    return np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


VIDEO_SUFFIXES = (".mp4", ".gif")


def run_ffmpeg(args: list[str], stdin: bytes | None = None, source: str = "ffmpeg") -> bytes:
    """Run the ffmpeg of imageio-ffmpeg with ``args``, feeding ``stdin``; returns its stdout.

    Spawned with ``process_group=0`` instead of imageio-ffmpeg's ``preexec_fn=os.setpgrp``: the child runs no
    Python code, so no ``os.fork()`` of the multithreaded JAX process (JAX warns that it may deadlock) and
    CPython can use vfork/posix_spawn. Its own process group keeps a terminal's Ctrl-C for us; an exception or
    signal here kills it. Raises ``ValueError`` naming ``source`` with ffmpeg's last message on failure.
    """
    import subprocess

    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    if stdin is not None:
        command.remove("-nostdin")
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    try:
        out, err = proc.communicate(stdin)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        raise ValueError(f"{source}: ffmpeg failed (exit {proc.returncode}): {lines[-1] if lines else ''}")
    return out


def write_video(path, frames, fps: int = 30) -> None:
    """Write frames (T, H, W, 3) float in [0, 1] or uint8 to an MP4 (H.264, yuv420p, through ffmpeg) or GIF.

    The format follows the suffix of ``path`` (.mp4 or .gif). MP4 needs even H and W (yuv420p).
    """
    path = pathlib.Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{path}: frames must have shape (T >= 1, H, W, 3), got {frames.shape}")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    frames = frames if frames.dtype == np.uint8 else to_uint8(frames)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        t, h, w, _ = frames.shape
        if h % 2 or w % 2:
            raise ValueError(f"{path}: MP4 needs an even frame size, got {h}x{w}")
        run_ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
                    "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "25",
                    "-f", "mp4", "-y", os.fspath(path)],
                   stdin=np.ascontiguousarray(frames).tobytes(), source=os.fspath(path))
    elif suffix == ".gif":
        import imageio.v3 as iio

        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0, plugin="pillow")
    else:
        raise ValueError(f"{path}: video suffix must be one of {VIDEO_SUFFIXES}")


def write_image(path, image) -> None:
    """Write one image (H, W, 3) float in [0, 1] or uint8 as PNG/JPEG (by suffix)."""
    from PIL import Image

    image = np.asarray(image)
    Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image)).save(path)
