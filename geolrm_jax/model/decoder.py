"""Gaussian decoder (original `GaussianRenderer.get_gaussians`).

Per anchor: Linear → SiLU → Linear to K·14 features, per Gaussian [xyz, opacity, scale ×3, quat ×4, rgb ×3]:
  means = anchor + sigmoid · offset_max, opacity = sigmoid, scale = sigmoid · scale_max,
  quat = L2-normalized (w first), rgb = clamp(x, −0.5, 0.5) + 0.5.
Padded anchors (mask False) give opacity 0. The activations are computed in float32; the MLP in `dtype`,
float32 by default (as the original, whose `get_gaussians` runs outside its bf16 autocast: in bf16 a raw
quaternion of small norm turns bf16 rounding into rotation errors of up to 0.1), at HIGHEST matmul precision
in float32 (no TF32 on GPUs).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from geolrm_jax.render.gaussians import Gaussians

GS_DIM = 14


def gaussians_from_features(feats, anchors, anchor_mask, offset_max: float, scale_max: float) -> Gaussians:
    """feats (B, S, K, 14), anchors (B, S, 3), anchor_mask (B, S) -> Gaussians with (B, S·K, ...) fields."""
    f = feats.astype(jnp.float32)
    b, s, k, _ = f.shape
    means = anchors.astype(jnp.float32)[:, :, None] + jax.nn.sigmoid(f[..., 0:3]) * offset_max
    opacity = jax.nn.sigmoid(f[..., 3]) * anchor_mask[:, :, None].astype(jnp.float32)
    scales = jax.nn.sigmoid(f[..., 4:7]) * scale_max
    q = f[..., 7:11]
    quats = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)  # as F.normalize
    rgbs = jnp.clip(f[..., 11:14], -0.5, 0.5) + 0.5
    flat = lambda x: x.reshape(b, s * k, *x.shape[3:])
    return Gaussians(flat(means), flat(scales), flat(quats), flat(opacity), flat(rgbs))


def gaussians_to_array(g: Gaussians):
    """Gaussians -> (..., N, 14) in the original layout [xyz, opacity, scale, quat, rgb]."""
    return jnp.concatenate([g.means, g.opacities[..., None], g.scales, g.quats, g.rgbs], -1)


class GaussianDecoder(nn.Module):
    """latents (B, S, dim), anchors (B, S, 3), anchor_mask (B, S) -> Gaussians (B, S·gs_per_token, ...).

    dtype: compute dtype of the latent MLP (`config.decoder_dtype`)."""

    gs_per_token: int
    offset_max: float
    scale_max: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latents, anchors, anchor_mask):
        out = self.gs_per_token * GS_DIM
        # Under a sharded trainer (train.sharding.activation_sharding) the activations stay split over the batch
        # only: otherwise the partitioner carries the kernels' 'fsdp' split into the K·14 feature axis, which
        # cannot be reshaped into (K, 14) and sliced (nor its gradient formed) without replicating it. Outside
        # such a context these constraints are no-ops.
        batch_only = lambda t: nn.with_logical_constraint(t, ("batch", None, None))
        precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
        dense = functools.partial(nn.Dense, out, dtype=self.dtype, precision=precision)
        x = batch_only(dense(name="latent_decoder_0")(latents))
        x = batch_only(dense(name="latent_decoder_2")(nn.silu(x)))
        b, s, _ = x.shape
        return gaussians_from_features(x.reshape(b, s, self.gs_per_token, GS_DIM), anchors, anchor_mask,
                                       self.offset_max, self.scale_max)
