"""Evaluation metrics: occupancy IoU/precision/recall (stage 1); PSNR, SSIM, LPIPS (stage 2).

Pure, batched, jit-able. Images are channel-last (..., H, W, C) in [0, 1]. Per-image metrics return the
leading shape (...); ``image_metrics`` averages them over valid views. See docs/losses.md.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from geolrm_jax.train.losses import masked_mean
from geolrm_jax.train.lpips import lpips_distance


def occupancy_metrics(logits, target, example_mask=None, *, logit_threshold=0.0):
    """IoU, precision and recall of the predicted occupancy, pooled over the valid examples.

    logits (B, ...) , target (B, ...) in {0, 1}, example_mask (B,) bool. A voxel is predicted occupied when
    ``logits > logit_threshold``; the default 0 (p > 0.5) is what GeoLRM's serializer uses to select anchors
    at inference (``occs > 0``). (Its stage-1 training log compared the raw logits with 0.5.)
    Returns float32 scalars ``iou`` = tp/(tp+fp+fn), ``precision`` = tp/(tp+fp), ``recall`` = tp/(tp+fn)
    (each 0 when its denominator is 0) and the counts ``tp``, ``fp``, ``fn`` (float32, for accumulation).
    """
    pred = logits > logit_threshold
    truth = target > 0.5
    if example_mask is None:
        valid = jnp.ones(pred.shape, bool)
    else:
        valid = jnp.broadcast_to(jnp.asarray(example_mask, bool).reshape((-1,) + (1,) * (pred.ndim - 1)),
                                 pred.shape)
    tp = jnp.sum(pred & truth & valid, dtype=jnp.float32)
    fp = jnp.sum(pred & ~truth & valid, dtype=jnp.float32)
    fn = jnp.sum(~pred & truth & valid, dtype=jnp.float32)

    def ratio(num, den):
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

    return {"iou": ratio(tp, tp + fp + fn), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "tp": tp, "fp": fp, "fn": fn}


def psnr(pred, target, *, data_range=1.0, max_db=100.0):
    """Per-image PSNR in dB: 10·log10(data_range² / MSE), MSE over (H, W, C); capped at ``max_db``.

    pred, target (..., H, W, C) -> (...). (GeoLRM's validation log computed one PSNR from the MSE pooled over
    its batch; per-image PSNR averaged over views is the usual reporting convention and is used here.)
    """
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    mse = jnp.mean(err, axis=(-3, -2, -1))
    floor = data_range**2 * 10.0 ** (-max_db / 10.0)
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, floor))


def gaussian_window(size=11, sigma=1.5):
    """Normalized 1-D Gaussian taps (size,), centered; the SSIM window of Wang et al. / torchmetrics."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x, taps):
    """Separable 'valid' filtering of (..., H, W, C) along H and W with 1-D taps: (..., H−k+1, W−k+1, C)."""
    k = len(taps)
    h, w = x.shape[-3], x.shape[-2]
    x = sum(float(t) * x[..., i: h - k + 1 + i, :, :] for i, t in enumerate(taps))
    return sum(float(t) * x[..., :, i: w - k + 1 + i, :] for i, t in enumerate(taps))


def ssim(pred, target, *, data_range=1.0, window_size=11, sigma=1.5, k1=0.01, k2=0.03, pad_reflect=False):
    """Per-image mean SSIM (Wang et al. 2004) with an 11×11 Gaussian window, σ = 1.5.

    pred, target (..., H, W, C) with H, W >= window_size -> (...). Local statistics use the Gaussian-weighted
    (population) moments; the SSIM map is averaged over channels and over

    * ``pad_reflect=False`` (default): the 'valid' positions only (window fully inside the image) — equal to
      ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
      and to torchmetrics < 1.5 (what GeoLRM's mid-2024 code ran), which crop the border;
    * ``pad_reflect=True``: all H×W positions of the map computed on the reflect-padded image (torch/numpy
      'reflect', no edge repeat) — equal to torchmetrics >= 1.5 (its PR #2721 dropped the crop).

    ``data_range`` defaults to 1 (images in [0, 1]); torchmetrics' default infers it from the data.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ: {pred.shape} vs {target.shape}")
    if min(pred.shape[-3], pred.shape[-2]) < window_size:
        raise ValueError(f"ssim: images {pred.shape[-3]}x{pred.shape[-2]} smaller than the window {window_size}")
    taps = gaussian_window(window_size, sigma)
    x = pred.astype(jnp.float32)
    y = target.astype(jnp.float32)
    if pad_reflect:
        r = window_size // 2
        pad = [(0, 0)] * (x.ndim - 3) + [(r, r), (r, r), (0, 0)]
        x, y = jnp.pad(x, pad, mode="reflect"), jnp.pad(y, pad, mode="reflect")
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x * mu_x
    var_y = _filter_valid(y * y, taps) - mu_y * mu_y
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return jnp.mean(ssim_map, axis=(-3, -2, -1))


def lpips(params, pred, target, *, dtype=jnp.float32):
    """Per-image LPIPS-VGG16 of images (..., H, W, 3) in [0, 1] (mapped to [−1, 1] as the original) -> (...)."""
    return lpips_distance(params, pred * 2.0 - 1.0, target * 2.0 - 1.0, dtype=dtype)


def image_metrics(pred, target, view_mask=None, lpips_params=None, *, data_range=1.0):
    """Stage-2 metrics averaged over the valid views: ``psnr``, ``ssim`` and (with params) ``lpips``.

    pred, target (B, V, H, W, 3) in [0, 1]; view_mask (B, V) bool (None = all valid). Float32 scalars.
    """
    weights = jnp.ones(pred.shape[:2], jnp.float32) if view_mask is None else view_mask.astype(jnp.float32)
    out = {"psnr": masked_mean(psnr(pred, target, data_range=data_range), weights),
           "ssim": masked_mean(ssim(pred, target, data_range=data_range), weights)}
    if lpips_params is not None:
        out["lpips"] = masked_mean(lpips(lpips_params, pred, target), weights)
    return out
