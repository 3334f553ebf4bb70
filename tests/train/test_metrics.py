"""Occupancy metrics, PSNR, SSIM (vs a scipy implementation of skimage's algorithm) and image_metrics."""
import pathlib

import jax
import numpy as np
import pytest
from scipy import ndimage

from geolrm_jax.train import lpips as lp
from geolrm_jax.train import metrics

LIN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "lpips_vgg_lin_v0.1.npz"


def _np_ssim(x, y, data_range=1.0, crop=True):
    """skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    channel_axis=-1) re-stated with scipy: padded Gaussian filter (truncate 3.5 -> 11 taps), then the
    5-pixel border cropped; mean over pixels and channels. crop=False: torchmetrics >= 1.5 (torch 'reflect'
    padding, which is scipy's 'mirror', and no crop)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mode = "reflect" if crop else "mirror"
    f = lambda a: ndimage.gaussian_filter(a, sigma=(1.5, 1.5, 0), truncate=3.5, mode=mode)
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s[5:-5, 5:-5].mean() if crop else s.mean()


def _images(rng, shape):
    """Smooth-plus-noise images in [0, 1] and a degraded copy."""
    *lead, h, w, c = shape
    small = rng.uniform(size=(*lead, h // 4 + 1, w // 4 + 1, c))
    base = ndimage.zoom(small, [1] * len(lead) + [4, 4, 1], order=1)
    x = np.clip(base[..., :h, :w, :] + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return x, y


def test_ssim_matches_scipy_reference():
    rng = np.random.default_rng(0)
    x, y = _images(rng, (2, 2, 24, 32, 3))
    got = np.asarray(jax.jit(metrics.ssim)(x, y))
    assert got.shape == (2, 2)
    ref = np.array([[_np_ssim(x[i, j], y[i, j]) for j in range(2)] for i in range(2)])
    assert 0.2 < ref.min() < ref.max() < 0.99  # a meaningful range, not the trivial 0 or 1
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    padded = np.asarray(metrics.ssim(x, y, pad_reflect=True))
    ref_padded = np.array([[_np_ssim(x[i, j], y[i, j], crop=False) for j in range(2)] for i in range(2)])
    assert np.abs(ref_padded - ref).max() > 1e-3  # the two conventions do differ
    np.testing.assert_allclose(padded, ref_padded, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.ssim(y, x)), got, rtol=1e-5)
    np.testing.assert_allclose(metrics.gaussian_window().sum(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="smaller than the window"):
        metrics.ssim(x[..., :8, :8, :], y[..., :8, :8, :])


def test_psnr():
    rng = np.random.default_rng(1)
    x, y = _images(rng, (3, 8, 9, 3))
    mse = np.mean((x.astype(np.float64) - y) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(metrics.psnr(x, y)), 10 * np.log10(1 / mse), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics.psnr(x * 2, y * 2, data_range=2.0)),
                               10 * np.log10(1 / mse), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics.psnr(x, x)), 100.0)


def test_occupancy_metrics():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 6, 6, 6)).astype(np.float32)
    target = (rng.uniform(size=logits.shape) < 0.4).astype(np.uint8)
    mask = np.array([True, True, False])
    out = jax.jit(metrics.occupancy_metrics)(logits, target, mask)
    pred, truth = logits[mask] > 0, target[mask] > 0
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    assert tp > 0 and fp > 0 and fn > 0
    assert (float(out["tp"]), float(out["fp"]), float(out["fn"])) == (tp, fp, fn)
    np.testing.assert_allclose(float(out["iou"]), tp / (tp + fp + fn), rtol=1e-6)
    np.testing.assert_allclose(float(out["precision"]), tp / (tp + fp), rtol=1e-6)
    np.testing.assert_allclose(float(out["recall"]), tp / (tp + fn), rtol=1e-6)
    strict = metrics.occupancy_metrics(logits, target, logit_threshold=0.5)
    assert float(strict["tp"]) == ((logits > 0.5) & (target > 0)).sum()
    empty = metrics.occupancy_metrics(np.full_like(logits, -5.0), np.zeros_like(target))
    assert all(float(empty[k]) == 0.0 for k in ("iou", "precision", "recall"))


def test_image_metrics_average_valid_views_only():
    rng = np.random.default_rng(3)
    x, y = _images(rng, (1, 3, 16, 16, 3))
    view_mask = np.array([[True, False, True]])
    x_garbage = x.copy()
    x_garbage[0, 1] = np.nan
    params = lp.seeded_lpips_params(0, LIN)
    run = jax.jit(lambda a, b: (metrics.image_metrics(a, b, view_mask, params), metrics.psnr(a, b),
                                metrics.ssim(a, b), metrics.lpips(params, a, b)))
    out, per_psnr, per_ssim, per_lpips = run(x_garbage, y)
    for key, per_view in (("psnr", per_psnr), ("ssim", per_ssim), ("lpips", per_lpips)):
        expected = np.asarray(per_view)[view_mask].mean()
        assert np.isfinite(expected)
        np.testing.assert_allclose(float(out[key]), expected, rtol=1e-5, err_msg=key)
    assert float(out["lpips"]) > 0


def test_ssim_matches_skimage_and_torchmetrics_if_installed():
    """Runs only where scikit-image / torchmetrics are installed (not in CI); see docs/losses.md."""
    rng = np.random.default_rng(4)
    x, y = _images(rng, (2, 20, 28, 3))
    got = np.asarray(metrics.ssim(x, y))
    checked = 0
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        pass
    else:
        ref = [structural_similarity(x[i], y[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=-1) for i in range(2)]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        checked += 1
    try:
        import torch
        from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
    except ImportError:
        pass
    else:
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).double()
        ref = tm_ssim(to_t(x), to_t(y), data_range=1.0, reduction="none").numpy()
        # torchmetrics >= 1.5 averages the reflect-padded map (no border crop).
        np.testing.assert_allclose(np.asarray(metrics.ssim(x, y, pad_reflect=True)), ref, rtol=1e-5, atol=1e-5)
        checked += 1
    if not checked:
        pytest.skip("neither scikit-image nor torchmetrics is installed")
