"""Training losses of GeoLRM's two stages, as pure, batched, jit-able functions.

Sources (the original PyTorch code, alibaba-yuanjing-aigclab/GeoLRM; formulas re-derived, not copied):

* stage 1 (``src/serializer_wrapper.py: GeoSRL.compute_loss``): ``BCEWithLogits(occupancy) +
  geo_scal_loss(occupancy)``; ``geo_scal_loss`` (``src/utils/loss_util.py``) is MonoScene's scene-class
  affinity loss in its binary (geometry) form: precision, recall and specificity terms, each −log(·).
* stage 2 (``src/geolrm_wrapper.py: GeoLRM.compute_loss``): ``1·MSE(2·rgb−1) + 2·LPIPS + 1·MSE(alpha) +
  0.2·EdgeAwareLogL1(depth) + 0.05·TV(depth)`` with ``EdgeAwareLogL1``/``TVLoss`` from ``loss_util.py``.

Conventions: occupancy logits and targets (B, G, G, G) (any trailing voxel shape works); images channel-last
(B, V, H, W, 3) in [0, 1]; alpha and depth (B, V, H, W). Batch reductions pool over all valid elements, as
the original does over its (always full) batch; ``example_mask`` (B,) / ``view_mask`` (B, V) remove padded
examples / views entirely (they contribute nothing to value or gradient). All returned losses are float32
scalars. See docs/losses.md for the formulas.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from geolrm_jax.train.lpips import lpips_distance

# torch's BCE clamps log(p) at -100; keeping it bounds each affinity term by 100, as the original.
_LOG_CLAMP = -100.0


def _broadcast_mask(mask, like):
    """(B,) or (B, V) mask -> float32 weights broadcastable to ``like``; None -> ones."""
    if mask is None:
        return jnp.ones(like.shape[:1], jnp.float32).reshape((-1,) + (1,) * (like.ndim - 1))
    mask = jnp.asarray(mask)
    if like.shape[: mask.ndim] != mask.shape:
        raise ValueError(f"mask of shape {mask.shape} does not match the leading dims of {like.shape}")
    return mask.astype(jnp.float32).reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def masked_mean(values, weights):
    """sum(values·weights) / sum(weights) over all elements (weights broadcast); 0 when sum(weights) == 0.

    Entries with weight 0 are replaced by 0 before the product, so NaN/Inf there never leaks into the value
    or the gradient of the selected entries.
    """
    weights = jnp.broadcast_to(weights, values.shape).astype(jnp.float32)
    safe = jnp.where(weights > 0, values.astype(jnp.float32), 0.0)
    total = jnp.sum(weights)
    return jnp.sum(safe * weights) / jnp.maximum(total, 1e-12) * (total > 0)


# ------------------------------------------------------------------------------------------------ stage 1


def bce_occupancy(logits, target, example_mask=None):
    """Mean binary cross-entropy with logits over all voxels of the valid examples.

    logits (B, ...) float, target (B, ...) in {0, 1} (any dtype; soft targets allowed), example_mask (B,).
    Per voxel: max(x, 0) − x·t + log(1 + exp(−|x|)), the stable form of −[t·log σ(x) + (1−t)·log(1−σ(x))].
    """
    w = _broadcast_mask(example_mask, logits)
    x = jnp.where(w > 0, logits.astype(jnp.float32), 0.0)  # padded examples: exactly-zero gradients
    t = target.astype(jnp.float32)
    per_voxel = jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
    return masked_mean(per_voxel, w)


def scene_class_affinity_loss(logits, target, example_mask=None):
    """MonoScene's geometric scene-class affinity loss (``geo_scal_loss`` as GeoLRM uses it).

    With p = σ(logits) and t the binary target, pooled over all voxels of the valid examples:

        precision   = Σ t·p / Σ p
        recall      = Σ t·p / Σ t
        specificity = Σ (1−t)(1−p) / Σ (1−t)
        loss = −log(precision) − log(recall) − log(specificity)     (each log clamped at −100, as torch's BCE)

    A term whose denominator is 0 (e.g. recall when no voxel is occupied, where the original gives NaN) is
    left out (contributes 0); a term whose numerator is 0 is the clamp value 100 with a zero gradient (torch's
    BCE backward gives a huge finite one there). Returns a float32 scalar.
    """
    w = jnp.broadcast_to(_broadcast_mask(example_mask, logits), logits.shape)
    p = jax.nn.sigmoid(jnp.where(w > 0, logits.astype(jnp.float32), 0.0))
    t = target.astype(jnp.float32)
    # Padded examples: no predicted and no target mass (where, not a product, so NaN there cannot leak).
    p, t = jnp.where(w > 0, p, 0.0), jnp.where(w > 0, t, 0.0)
    intersection = jnp.sum(t * p)

    def neg_log_ratio(num, den):
        # num == 0 gives the clamp value −(−100) exactly, with a zero (not NaN) gradient.
        ok = (den > 0) & (num > 0)
        ratio = jnp.where(ok, num, 1.0) / jnp.where(ok, den, 1.0)
        value = jnp.where(ok, -jnp.maximum(jnp.log(ratio), _LOG_CLAMP), -_LOG_CLAMP)
        return jnp.where(den > 0, value, 0.0)

    return (neg_log_ratio(intersection, jnp.sum(p))
            + neg_log_ratio(intersection, jnp.sum(t))
            + neg_log_ratio(jnp.sum((w - t) * (w - p)), jnp.sum(w - t)))


def occupancy_losses(logits, target, example_mask=None):
    """Stage-1 loss dict: ``bce``, ``affinity`` and ``total`` = bce + affinity (weights 1, 1 as original)."""
    bce = bce_occupancy(logits, target, example_mask)
    affinity = scene_class_affinity_loss(logits, target, example_mask)
    return {"bce": bce, "affinity": affinity, "total": bce + affinity}


# ------------------------------------------------------------------------------------------------ stage 2


class RenderLossWeights(NamedTuple):
    """Stage-2 loss weights; defaults are the original's (lambda_mse, lambda_lpips, ...)."""

    mse: float = 1.0
    lpips: float = 2.0
    mask: float = 1.0
    depth: float = 0.2
    depth_tv: float = 0.05


def edge_aware_log_l1(pred_depth, target_depth, image, pixel_mask):
    """Edge-aware log-L1 depth loss (``EdgeAwareLogL1(implementation='scalar')`` of the original).

    pred_depth, target_depth (..., H, W); image (..., H, W, 3) (the target image in [0, 1]); pixel_mask
    (..., H, W) bool (valid pixels: target alpha > 0 in valid views).

        e(p)   = log(1 + |pred − target|)
        λx     = exp(−mean_c |I[y, x] − I[y, x+1]|),   λy = exp(−mean_c |I[y, x] − I[y+1, x]|)
        loss   = mean_{mask[y, x]} λx·e[y, x]  +  mean_{mask[y, x]} λy·e[y, x]

    where the x-term runs over x < W−1 and the y-term over y < H−1 (the pixel's own mask is used).
    """
    err = jnp.log1p(jnp.abs(pred_depth.astype(jnp.float32) - target_depth.astype(jnp.float32)))
    img = image.astype(jnp.float32)
    lambda_x = jnp.exp(-jnp.mean(jnp.abs(img[..., :, :-1, :] - img[..., :, 1:, :]), axis=-1))
    lambda_y = jnp.exp(-jnp.mean(jnp.abs(img[..., :-1, :, :] - img[..., 1:, :, :]), axis=-1))
    mask = pixel_mask.astype(jnp.float32)
    loss_x = masked_mean(lambda_x * err[..., :, :-1], mask[..., :, :-1])
    loss_y = masked_mean(lambda_y * err[..., :-1, :], mask[..., :-1, :])
    return loss_x + loss_y


def depth_tv(depth, view_mask=None):
    """Total variation of rendered depth (``TVLoss`` of the original), over the valid views.

    depth (B, V, H, W), view_mask (B, V): mean |d[y, x] − d[y, x+1]| + mean |d[y, x] − d[y+1, x]|.
    """
    d = depth.astype(jnp.float32)
    w = _broadcast_mask(view_mask, d)
    return (masked_mean(jnp.abs(d[..., :, :-1] - d[..., :, 1:]), w)
            + masked_mean(jnp.abs(d[..., :-1, :] - d[..., 1:, :]), w))


def render_losses(rgb, alpha, depth, target_rgb, target_alpha, target_depth, view_mask=None,
                  lpips_params=None, *, weights: RenderLossWeights = RenderLossWeights(),
                  lpips_dtype=jnp.float32):
    """Stage-2 losses of rendered target views.

    Args:
      rgb (B, V, H, W, 3), alpha (B, V, H, W), depth (B, V, H, W): the renderer's output (rgb in [0, 1],
        alpha = Σ αT, depth = Σ αT·z unnormalized, as ``geolrm_jax.render.render``).
      target_rgb (B, V, H, W, 3) in [0, 1] composited on the background, target_alpha (B, V, H, W),
        target_depth (B, V, H, W) (0 where invalid).
      view_mask (B, V) bool: padded views contribute nothing. None = all valid.
      lpips_params: LPIPS-VGG16 variables (``geolrm_jax.train.lpips``). May be None only when
        ``weights.lpips == 0`` (the LPIPS term is then not computed and reported as 0).
      weights: loss weights; defaults as the original.
      lpips_dtype: compute dtype of the VGG trunk (float32 default; bfloat16 is faster on GPU).

    Returns a dict of float32 scalars: unweighted terms ``mse`` (on images mapped to [−1, 1]), ``lpips``,
    ``mask`` (MSE of alpha), ``depth`` (edge-aware log-L1 on pixels with target alpha > 0), ``depth_tv``,
    and ``total`` = Σ weight·term.
    """
    if rgb.shape != target_rgb.shape or rgb.shape[-1] != 3 or rgb.ndim != 5:
        raise ValueError(f"rgb {rgb.shape} and target_rgb {target_rgb.shape} must both be (B, V, H, W, 3)")
    for name, a, b in (("alpha", alpha, target_alpha), ("depth", depth, target_depth)):
        if a.shape != rgb.shape[:-1] or b.shape != rgb.shape[:-1]:
            raise ValueError(f"{name} {a.shape} / target_{name} {b.shape} must be {rgb.shape[:-1]}")
    if view_mask is None:
        view_mask = jnp.ones(rgb.shape[:2], bool)
    view_w = _broadcast_mask(view_mask, alpha)  # (B, V, 1, 1)
    # Zero the padded views up front, so that even NaN there gives exactly-zero (not NaN) gradients.
    rgb, target_rgb = (jnp.where(view_w[..., None] > 0, x, 0.0) for x in (rgb, target_rgb))
    alpha, depth, target_alpha, target_depth = (jnp.where(view_w > 0, x, 0.0)
                                                for x in (alpha, depth, target_alpha, target_depth))

    pred_pm = rgb.astype(jnp.float32) * 2.0 - 1.0
    target_pm = target_rgb.astype(jnp.float32) * 2.0 - 1.0
    terms = {
        "mse": masked_mean(jnp.square(pred_pm - target_pm), view_w[..., None]),
        "mask": masked_mean(jnp.square(alpha.astype(jnp.float32) - target_alpha.astype(jnp.float32)), view_w),
        "depth": edge_aware_log_l1(depth, target_depth, target_rgb,
                                   (target_alpha > 0) & (view_w > 0)),
        "depth_tv": depth_tv(depth, view_mask),
    }
    if lpips_params is None:
        if weights.lpips != 0:
            raise ValueError("render_losses: lpips_params is None but weights.lpips != 0")
        terms["lpips"] = jnp.zeros((), jnp.float32)
    else:
        per_view = lpips_distance(lpips_params, pred_pm, target_pm, dtype=lpips_dtype)  # (B, V)
        terms["lpips"] = masked_mean(per_view, view_mask.astype(jnp.float32))
    terms["total"] = sum(getattr(weights, k) * terms[k] for k in RenderLossWeights._fields)
    return terms
