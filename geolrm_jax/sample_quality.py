"""How well a reconstruction of the bundled sample matches the object: held-out views and the true surface.

The bundled sample (``geolrm_jax/assets/sample``: 6 Zero123++ views of a mug on a saucer, a mesh path traced by
Mitsuba) comes with its truth in ``tests/data/sample_truth`` (both written by ``tools/make_sample.py``): 8
held-out views (other azimuths and elevations, same radius 4 and fov 30 degrees, 256 px RGBA) with their
``cameras.json``, and ``surface_points.ply`` (20000 points on the object's visible surface, with the colour
each shows in the renders). ``tools/sample_quality.py`` is the command-line front end (JSON out).

Gaussians come from a ``geolrm-jax reconstruct`` output folder (``gaussians.ply``, standard format) or from a
model run here exactly as ``reconstruct`` runs it (``gaussians_from_model``: the same weight search, input size
and reader); both keep the Gaussians with opacity >= 0.005 (the export's threshold), so both give the same
numbers.

Metrics (``score``; every distance is in units of the object's extent, the longest side of its bounding box,
0.9 in world units):

* ``psnr``, ``ssim``: the Gaussians rendered on white (``inference.render_views``, the project's splatter)
  at each held-out camera against the truth composited on white (``gobjaverse_io.composite``, as training and
  ``eval`` do), per view (``train.metrics``), averaged over the views;
* ``psnr_object``: PSNR over the object's pixels only (truth alpha >= 0.5); ``ssim_object``: SSIM on the crop
  to the truth silhouette's bounding box, widened by ``CROP_MARGIN`` px on each side;
* ``blank_psnr``, ``blank_ssim``, ``blank_psnr_object``, ``blank_ssim_object``: the same for an all-white image,
  what a reconstruction with nothing in it scores (the floor to compare against);
* ``chamfer``, ``fscore_2``, ``precision_2``, ``recall_2``, ``fscore_5``, ``precision_5``, ``recall_5``
  (``geometry_metrics.chamfer_fscore``): the means of the Gaussians with opacity >= 0.05
  (``geometry_metrics.gaussian_points``, subsampled to 16384 with a fixed seed) against the truth points, at
  thresholds 0.02 and 0.05 of the extent. Chamfer = mean of the two mean nearest distances;
* ``colour_error``: over the predicted points within 0.05 of the surface, the mean absolute difference (sRGB in
  [0, 1], averaged over channels) between the Gaussian's colour and the seen colour of the nearest truth point
  that some render shows;
* ``gaussians`` (count kept for images), ``surface_gaussians`` (count with opacity >= 0.05).

With no Gaussian at all, images are blank, F-scores, precisions and recalls are 0, and ``chamfer`` and
``colour_error`` are None.
"""

from __future__ import annotations

import json
import pathlib
import types
from typing import NamedTuple

import numpy as np

from geolrm_jax import export, geometry_metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRUTH_DIR = REPO_ROOT / "tests" / "data" / "sample_truth"
POINTS_FILE = "surface_points.ply"
FSCORE_THRESHOLDS = {"2": 0.02, "5": 0.05}  # suffix -> threshold as a fraction of the object's extent
COLOUR_RADIUS = 0.05  # predicted points this close to the surface (extent units) count for colour_error
CROP_MARGIN = 8  # px around the truth silhouette for ssim_object
SURFACE_MIN_OPACITY = geometry_metrics.SURFACE_MIN_OPACITY
IMAGE_MIN_OPACITY = export.DEFAULT_MIN_OPACITY


class SampleTruth(NamedTuple):
    """The held-out views (V of them, S px) and the surface of the sample object."""

    images: np.ndarray  # (V, S, S, 3) float32, composited on white
    alphas: np.ndarray  # (V, S, S) float32
    c2w: np.ndarray  # (V, 4, 4) OpenGL
    K: np.ndarray  # (V, 3, 3) normalized
    points: np.ndarray  # (P, 3) float32, world
    seen_rgb: np.ndarray  # (P, 3) float32 in [0, 1], the colour renders show (meaningful where seen > 0)
    seen: np.ndarray  # (P,) int, in how many renders the point is visible
    albedo: np.ndarray  # (P, 3) float32 in [0, 1], the part's colour (sRGB)
    extent: float  # longest side of the object's bounding box (world units)


def load_truth(truth_dir=TRUTH_DIR, views=None, size: int | None = None) -> SampleTruth:
    """Read ``truth_dir`` (see the module doc); ``views``: indices of the held-out views to keep (default all);
    ``size``: resample the images to this many pixels (premultiplied bilinear). Errors name the file."""
    from plyfile import PlyData

    from geolrm_jax import evaluate, inputs
    from geolrm_jax.data import gobjaverse_io

    truth_dir = pathlib.Path(truth_dir)
    camera_file = truth_dir / "cameras.json"
    if not camera_file.is_file():
        raise FileNotFoundError(f"{camera_file}: the sample's truth is missing (python tools/make_sample.py)")
    files, c2w, K = inputs.read_cameras_json(camera_file)
    meta = json.loads(camera_file.read_text())
    if not isinstance(meta.get("extent"), int | float) or not meta["extent"] > 0:
        raise ValueError(f"{camera_file}: field 'extent' (the object's longest side) must be a positive number")
    index = list(range(len(files))) if views is None else [int(v) for v in views]
    if not index or any(not 0 <= v < len(files) for v in index):
        raise ValueError(f"{camera_file}: views {index} out of range (it has {len(files)})")
    images, alphas = [], []
    for v in index:
        from PIL import Image

        try:
            with Image.open(files[v]) as img:
                rgba = np.asarray(img.convert("RGBA"))
        except OSError as err:
            raise ValueError(f"{files[v]}: cannot read image: {err}") from err
        rgb, alpha = gobjaverse_io.composite(rgba, size or rgba.shape[0], evaluate.WHITE)
        images.append(rgb)
        alphas.append(alpha)
    points_file = truth_dir / POINTS_FILE
    try:
        vertex = PlyData.read(str(points_file))["vertex"]
        col = lambda *keys: np.stack([np.asarray(vertex[k]) for k in keys], -1)
        points = col("x", "y", "z").astype(np.float32)
        seen_rgb = col("seen_red", "seen_green", "seen_blue").astype(np.float32) / 255.0
        seen = np.asarray(vertex["seen"]).astype(np.int64)
        albedo = col("red", "green", "blue").astype(np.float32) / 255.0
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{points_file}: cannot read the surface points: {type(err).__name__}: {err}") from err
    return SampleTruth(np.stack(images), np.stack(alphas), c2w[index], K[index], points, seen_rgb, seen,
                       albedo, float(meta["extent"]))


def gaussians_from_folder(folder) -> export.GaussianArrays:
    """The Gaussians of a ``geolrm-jax reconstruct`` output folder (its ``gaussians.ply``, standard format)."""
    path = pathlib.Path(folder) / "gaussians.ply"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (give a geolrm-jax reconstruct output folder)")
    return export.read_ply(path)


def gaussians_from_model(checkpoint=None, model_config=None, *, random_weights: bool = False, seed: int = 0,
                         sample_dir=None) -> tuple[export.GaussianArrays, str]:
    """Run a model on the sample as ``geolrm-jax reconstruct`` does -> (Gaussians with opacity >= 0.005, the
    line naming the model). Weights: ``checkpoint``, else ``reconstruct``'s search (``$GEOLRM_CHECKPOINT``, the
    cache, the bundled demo model); ``random_weights`` runs seeded random weights of ``model_config``."""
    from geolrm_jax import evaluate, inference, inputs, reconstruct

    choice = inference.resolve_model(checkpoint, model_config, random_weights=random_weights)
    if choice.checkpoint is None and not random_weights:
        raise ValueError("no checkpoint found (--checkpoint, $GEOLRM_CHECKPOINT, the cache or the bundled demo "
                         "model); pass --random-weights to score random weights")
    kind = "posed"
    size = reconstruct._default_image_size(types.SimpleNamespace(image_size=None), choice.preset, kind,
                                           choice.config.get("input_size"))
    views = inputs.load_views(sample_dir or reconstruct.SAMPLE_DIR, size, kind)
    predict, _, _ = evaluate.model_predictor(types.SimpleNamespace(seed=seed), choice)
    gaussians = predict(views.images, views.c2w, views.K)
    try:
        kept = export.to_numpy_gaussians(gaussians, IMAGE_MIN_OPACITY)
    except ValueError as err:  # non-finite output
        raise ValueError(f"the model's Gaussians are unusable: {err}") from err
    return kept, inference.describe_model(choice)


def _render(gaussians: export.GaussianArrays, truth: SampleTruth) -> np.ndarray:
    import jax.numpy as jnp

    from geolrm_jax import inference
    from geolrm_jax.render.gaussians import Gaussians

    size = truth.images.shape[1]
    if gaussians.means.shape[0] == 0:
        return np.ones_like(truth.images)
    batched = Gaussians(*(jnp.asarray(np.asarray(x, np.float32))[None] for x in gaussians))
    return inference.render_views(batched, truth.c2w, truth.K, size, chunk=len(truth.c2w))  # no padded views


def image_scores(renders: np.ndarray, truth: SampleTruth) -> dict[str, float]:
    """psnr, ssim, psnr_object, ssim_object of renders (V, S, S, 3) on white against the truth views."""
    import jax.numpy as jnp

    from geolrm_jax.train import metrics

    pred, true = jnp.asarray(renders, jnp.float32), jnp.asarray(truth.images)
    out = {"psnr": float(jnp.mean(metrics.psnr(pred, true))), "ssim": float(jnp.mean(metrics.ssim(pred, true)))}
    psnr_object, ssim_object = [], []
    size = truth.images.shape[1]
    for v, alpha in enumerate(truth.alphas):
        mask = alpha >= 0.5
        if not mask.any():
            raise ValueError(f"held-out view {v} shows no object")
        # the object's pixels as a 1 x P image: PSNR over them alone
        psnr_object.append(float(metrics.psnr(pred[v][mask][None], true[v][mask][None])))
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        top, bottom = max(rows[0] - CROP_MARGIN, 0), min(rows[-1] + 1 + CROP_MARGIN, size)
        left, right = max(cols[0] - CROP_MARGIN, 0), min(cols[-1] + 1 + CROP_MARGIN, size)
        ssim_object.append(float(metrics.ssim(pred[v, top:bottom, left:right], true[v, top:bottom, left:right])))
    out["psnr_object"], out["ssim_object"] = float(np.mean(psnr_object)), float(np.mean(ssim_object))
    return out


def surface_scores(gaussians: export.GaussianArrays, truth: SampleTruth,
                   num_points: int = geometry_metrics.DEFAULT_NUM_POINTS) -> dict:
    """chamfer, fscore/precision/recall at each ``FSCORE_THRESHOLDS`` and colour_error (module doc)."""
    from scipy.spatial import cKDTree

    pred = geometry_metrics.gaussian_points(gaussians.means, gaussians.opacities, SURFACE_MIN_OPACITY)
    colours = np.asarray(gaussians.rgbs, np.float32)[np.asarray(gaussians.opacities) >= SURFACE_MIN_OPACITY]
    out: dict = {"surface_gaussians": int(pred.shape[0])}
    if pred.shape[0] == 0:
        out.update({"chamfer": None, "colour_error": None})
        for suffix in FSCORE_THRESHOLDS:
            out.update({f"fscore_{suffix}": 0.0, f"precision_{suffix}": 0.0, f"recall_{suffix}": 0.0})
        return out
    if pred.shape[0] > num_points:
        pick = np.random.default_rng(0).choice(pred.shape[0], num_points, replace=False)
        pred, colours = pred[pick], colours[pick]
    pred_units, truth_units = pred / truth.extent, truth.points / truth.extent
    for suffix, threshold in FSCORE_THRESHOLDS.items():
        scores = geometry_metrics.chamfer_fscore(pred_units, truth_units, threshold)
        out.update({f"fscore_{suffix}": scores.fscore, f"precision_{suffix}": scores.precision,
                    f"recall_{suffix}": scores.recall, "chamfer": scores.chamfer})
    seen = truth.seen > 0
    distance, nearest = cKDTree(truth_units[seen]).query(pred_units)
    near = distance < COLOUR_RADIUS
    out["colour_error"] = (float(np.abs(colours[near] - truth.seen_rgb[seen][nearest[near]]).mean())
                           if near.any() else None)
    return out


def score(gaussians: export.GaussianArrays, truth: SampleTruth) -> dict:
    """Every metric of the module doc for one scene's Gaussians (``export.GaussianArrays``, any count)."""
    gaussians = export.GaussianArrays(*(np.asarray(x, np.float32) for x in gaussians))
    keep = gaussians.opacities >= IMAGE_MIN_OPACITY
    gaussians = export.GaussianArrays(*(x[keep] for x in gaussians))
    result = image_scores(_render(gaussians, truth), truth)
    blank = image_scores(np.ones_like(truth.images), truth)
    result.update({f"blank_{k}": v for k, v in blank.items()})
    result.update(surface_scores(gaussians, truth))
    result["gaussians"] = int(gaussians.means.shape[0])
    return result


def failures(metrics: dict, minimum: dict, maximum: dict | None = None) -> list[str]:
    """The gates ``metrics`` misses: each ``minimum[name]`` must be <= metrics[name], each ``maximum[name]``
    >= it; a missing, None or NaN value misses its gate. -> one line per miss (empty: all passed)."""
    missed = []
    for gates, below in ((minimum, True), (maximum or {}, False)):
        for name, gate in gates.items():
            value = metrics.get(name)
            if value is None or not np.isfinite(value):
                missed.append(f"{name} is {value} (gate {gate})")
            elif (value < gate) if below else (value > gate):
                missed.append(f"{name} = {value:.4g} is {'below' if below else 'above'} the gate {gate}")
    return missed
