"""Stage-1/2 losses vs direct numpy transcriptions of the original formulas; masks; gradients."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from geolrm_jax.train import losses
from geolrm_jax.train import lpips as lp

LIN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "lpips_vgg_lin_v0.1.npz"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_bce(logits, target):
    p = _sigmoid(logits.astype(np.float64))
    return np.mean(-(target * np.maximum(np.log(p), -100) + (1 - target) * np.maximum(np.log(1 - p), -100)))


def _np_geo_scal(logits, target):
    p = _sigmoid(logits.astype(np.float64))
    t = target.astype(np.float64)
    inter = (t * p).sum()
    terms = [inter / p.sum(), inter / t.sum(), ((1 - t) * (1 - p)).sum() / (1 - t).sum()]
    return sum(-max(np.log(v), -100) for v in terms)


def _occupancy(rng, b=3, g=8):
    logits = rng.normal(0, 2, (b, g, g, g)).astype(np.float32)
    target = (rng.uniform(size=(b, g, g, g)) < 0.3).astype(np.uint8)
    return logits, target


def test_stage1_losses_match_numpy_reference():
    rng = np.random.default_rng(0)
    logits, target = _occupancy(rng)
    out = jax.jit(losses.occupancy_losses)(logits, target)
    np.testing.assert_allclose(float(out["bce"]), _np_bce(logits, target), rtol=1e-5)
    np.testing.assert_allclose(float(out["affinity"]), _np_geo_scal(logits, target), rtol=1e-5)
    np.testing.assert_allclose(float(out["total"]), float(out["bce"] + out["affinity"]), rtol=1e-6)
    # Padded examples: equal to the loss of the valid examples alone, whatever the padded content is.
    mask = np.array([True, False, True])
    logits_garbage = logits.copy()
    logits_garbage[1] = np.nan
    masked = losses.occupancy_losses(logits_garbage, target, mask)
    grad = jax.grad(lambda z: losses.occupancy_losses(z, target, mask)["total"])(jnp.asarray(logits_garbage))
    assert np.all(np.asarray(grad)[1] == 0) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(masked["bce"]), _np_bce(logits[mask], target[mask]), rtol=1e-5)
    np.testing.assert_allclose(float(masked["affinity"]), _np_geo_scal(logits[mask], target[mask]), rtol=1e-5)


def test_stage1_matches_torch_if_available():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    logits, target = _occupancy(rng, b=2, g=6)
    tl, tt = torch.from_numpy(logits), torch.from_numpy(target.astype(np.float32))
    ref_bce = F.binary_cross_entropy_with_logits(tl.flatten(), tt.flatten()).item()
    p = torch.sigmoid(tl)
    inter = (tt * p).sum()
    ones = torch.ones(())
    ref_geo = sum(F.binary_cross_entropy(v, ones).item() for v in
                  (inter / p.sum(), inter / tt.sum(), ((1 - tt) * (1 - p)).sum() / (1 - tt).sum()))
    np.testing.assert_allclose(float(losses.bce_occupancy(logits, target)), ref_bce, rtol=1e-5)
    np.testing.assert_allclose(float(losses.scene_class_affinity_loss(logits, target)), ref_geo, rtol=1e-5)


def test_stage1_empty_target_and_gradients():
    rng = np.random.default_rng(2)
    logits, target = _occupancy(rng, b=2, g=4)
    empty = np.zeros_like(target)
    value, grad = jax.value_and_grad(losses.scene_class_affinity_loss)(jnp.asarray(logits), empty)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    # With no occupied voxel, precision -> -log(0) is clamped at 100, recall is left out.
    p = _sigmoid(logits.astype(np.float64))
    np.testing.assert_allclose(float(value), 100.0 - np.log(np.mean(1 - p)), rtol=1e-5)
    x = jnp.asarray(logits)
    check_grads(jax.jit(lambda z: losses.scene_class_affinity_loss(z, target)), (x,), order=1, modes=("rev",),
                atol=1e-2, rtol=1e-2, eps=1e-2)
    check_grads(jax.jit(lambda z: losses.bce_occupancy(z, target)), (x,), order=1, modes=("rev",),
                atol=1e-2, rtol=1e-2, eps=1e-2)


# ------------------------------------------------------------------------------------------------ stage 2


def _np_edge_aware_log_l1(pred, gt, rgb, mask):
    """Transcription of the original (NCHW with boolean indexing) on channel-last arrays."""
    logl1 = np.log(1 + np.abs(pred - gt))
    gx = np.mean(np.abs(rgb[..., :, :-1, :] - rgb[..., :, 1:, :]), -1)
    gy = np.mean(np.abs(rgb[..., :-1, :, :] - rgb[..., 1:, :, :]), -1)
    loss_x = np.exp(-gx) * logl1[..., :, :-1]
    loss_y = np.exp(-gy) * logl1[..., :-1, :]
    return loss_x[mask[..., :, :-1]].mean() + loss_y[mask[..., :-1, :]].mean()


def _np_tv(d):
    return np.mean(np.abs(d[..., :, :-1] - d[..., :, 1:])) + np.mean(np.abs(d[..., :-1, :] - d[..., 1:, :]))


def _render_batch(rng, b=2, v=3, h=16, w=20):
    rgb = rng.uniform(size=(b, v, h, w, 3)).astype(np.float32)
    alpha = rng.uniform(size=(b, v, h, w)).astype(np.float32)
    depth = rng.uniform(1, 3, (b, v, h, w)).astype(np.float32)
    t_rgb = rng.uniform(size=(b, v, h, w, 3)).astype(np.float32)
    t_alpha = (rng.uniform(size=(b, v, h, w)) < 0.6).astype(np.float32)
    t_depth = (rng.uniform(1, 3, (b, v, h, w)) * t_alpha).astype(np.float32)
    return rgb, alpha, depth, t_rgb, t_alpha, t_depth


def _np_render_terms(rgb, alpha, depth, t_rgb, t_alpha, t_depth):
    return {"mse": np.mean((rgb * 2 - 1 - (t_rgb * 2 - 1)) ** 2), "mask": np.mean((alpha - t_alpha) ** 2),
            "depth": _np_edge_aware_log_l1(depth, t_depth, t_rgb, t_alpha > 0), "depth_tv": _np_tv(depth)}


def test_render_losses_match_numpy_reference_and_ignore_padded_views():
    rng = np.random.default_rng(3)
    batch = _render_batch(rng)
    weights = losses.RenderLossWeights(lpips=0.0)
    out = jax.jit(lambda *a: losses.render_losses(*a, weights=weights))(*batch)
    ref = _np_render_terms(*batch)
    for key, value in ref.items():
        np.testing.assert_allclose(float(out[key]), value, rtol=1e-5, err_msg=key)
    expected_total = sum(getattr(weights, k) * ref[k] for k in ref)
    np.testing.assert_allclose(float(out["total"]), expected_total, rtol=1e-5)

    # Padded views: same as computing on the valid views only; garbage there does not leak.
    view_mask = np.array([[True, False, True], [True, True, False]])
    garbage = [x.copy() for x in batch]
    for x in garbage:
        x[~view_mask] = np.nan
    masked = losses.render_losses(*garbage, view_mask, weights=weights)
    valid = [x[view_mask] for x in batch]  # (n_valid, H, W, ...)
    ref_valid = _np_render_terms(*[x[None] for x in valid])
    for key, value in ref_valid.items():
        np.testing.assert_allclose(float(masked[key]), value, rtol=1e-5, err_msg=key)
    grad = jax.jit(jax.grad(lambda r, d: losses.render_losses(r, batch[1], d, *garbage[3:], view_mask,
                                                      weights=weights)["total"], argnums=(0, 1)))
    g_rgb, g_depth = grad(jnp.asarray(garbage[0]), jnp.asarray(garbage[2]))
    assert np.all(np.isfinite(np.asarray(g_rgb))) and np.all(np.isfinite(np.asarray(g_depth)))
    assert np.all(np.asarray(g_rgb)[~view_mask] == 0) and np.all(np.asarray(g_depth)[~view_mask] == 0)
    assert np.abs(np.asarray(g_depth)[view_mask]).max() > 0


def test_render_losses_gradients():
    rng = np.random.default_rng(4)
    rgb, alpha, depth, t_rgb, t_alpha, t_depth = _render_batch(rng, b=1, v=2, h=6, w=7)
    weights = losses.RenderLossWeights(lpips=0.0)
    f = jax.jit(lambda r, a, d: losses.render_losses(r, a, d, t_rgb, t_alpha, t_depth, weights=weights)["total"])
    check_grads(f, (jnp.asarray(rgb), jnp.asarray(alpha), jnp.asarray(depth)), order=1, modes=("rev",),
                atol=1e-2, rtol=1e-2, eps=1e-3)


def test_render_losses_lpips_term():
    rng = np.random.default_rng(5)
    batch = _render_batch(rng, b=1, v=2, h=16, w=16)
    params = lp.seeded_lpips_params(0, LIN)
    view_mask = np.array([[True, False]])
    out, per_view = jax.jit(lambda *a: (losses.render_losses(*a, view_mask, params),
                                        lp.lpips_distance(params, a[0] * 2 - 1, a[3] * 2 - 1)))(*batch)
    assert float(per_view[0, 0]) > 0 and np.isfinite(float(out["total"]))
    np.testing.assert_allclose(float(out["lpips"]), float(per_view[0, 0]), rtol=1e-5)
    rest = sum(w * float(out[k]) for k, w in losses.RenderLossWeights()._asdict().items() if k != "lpips")
    np.testing.assert_allclose(float(out["total"]), rest + 2.0 * float(out["lpips"]), rtol=1e-5)
    with pytest.raises(ValueError, match="lpips_params is None"):
        losses.render_losses(*batch)
    with pytest.raises(ValueError, match="target_alpha"):
        losses.render_losses(*batch[:4], batch[4][..., :-1], batch[5], weights=losses.RenderLossWeights(lpips=0))
