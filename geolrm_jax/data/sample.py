"""Posed-view folders such as the bundled sample ``geolrm_jax/assets/sample``.

Format: ``cameras.json`` = {"frames": [{"file": "000.png", "c2w": 4x4 OpenGL camera-to-world (z-up world),
"K": 3x3 intrinsics normalized by the image size}, ...]} with the (RGBA or RGB) PNGs beside it. The bundled
sample is one procedural object (``synthetic.write_sample``) in the 6 Zero123++ views, 128 px.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "sample")


def load_posed_views(folder: str = SAMPLE_DIR, background=(1.0, 1.0, 1.0)):
    """-> images (V, H, W, 3) float32 in [0, 1] composited on ``background``, c2w (V, 4, 4), K (V, 3, 3).

    Raises ValueError naming the file or field on bad input (missing files, mixed image sizes, bad cameras).
    """
    from geolrm_jax import geometry

    path = os.path.join(folder, "cameras.json")
    try:
        with open(path) as f:
            frames = json.load(f)["frames"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the frames list: {err!r}") from err
    if not frames:
        raise ValueError(f"{path}: no frames")
    images, c2ws, Ks = [], [], []
    bg = np.asarray(background, np.float32)
    for i, frame in enumerate(frames):
        try:
            file = os.path.join(folder, frame["file"])
            c2w = np.asarray(frame["c2w"], np.float32)
            K = np.asarray(frame["K"], np.float32)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: frame {i}: needs 'file', 'c2w' (4x4) and 'K' (3x3): {err!r}") from err
        try:
            with Image.open(file) as im:
                rgba = np.asarray(im.convert("RGBA"), np.float32) / 255.0
        except Exception as err:
            raise ValueError(f"{file}: cannot read image: {err}") from err
        if images and rgba.shape != images[0].shape[:2] + (4,):
            raise ValueError(f"{file}: size {rgba.shape[:2]} differs from the first view's {images[0].shape[:2]}")
        geometry.validate_cameras(c2w, K, source=f"{path}: frame {i}")
        images.append(rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]) * bg)
        c2ws.append(c2w)
        Ks.append(K)
    return np.stack(images).astype(np.float32), np.stack(c2ws), np.stack(Ks)
