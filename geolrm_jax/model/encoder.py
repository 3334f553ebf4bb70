"""Hierarchical image encoder of GeoLRM (original `DinoWrapper`).

Per view: high level = BN(ConvTranspose(k4, s2, p1)(DINOv2 features)); low level = BN(Conv(k4, s4)(
[ImageNet-normalized RGB, Plücker rays])). Both are flattened row-major and concatenated as [low, high].
BatchNorm always uses its running statistics (the original's eval mode; they are treated as frozen
constants when fine-tuning).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from geolrm_jax import geometry
from geolrm_jax.model.dinov2 import Dinov2Backbone, PatchConv, imagenet_normalize


class ConvTranspose2d(nn.Module):
    """torch.nn.ConvTranspose2d (no bias), NHWC. Kernel (k, k, in, out) = torch weight (in, out, k, k)
    transposed to (2, 3, 0, 1). Output size (H - 1)·stride - 2·padding + k."""

    features: int
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        pad = k - 1 - self.padding
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel[::-1, ::-1].astype(self.dtype), window_strides=(1, 1),
            padding=((pad, pad), (pad, pad)), lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def spatial_shapes(encoder_config, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((h, w) of the low level = size / 4, (h, w) of the high level = 2 * size / patch): the levels of
    :class:`HierarchicalEncoder`'s features for (height, width) images."""
    patch = encoder_config.dino_patch
    return (height // 4, width // 4), (2 * (height // patch), 2 * (width // patch))


class HierarchicalEncoder(nn.Module):
    """images (B, V, H, W, 3) in [0, 1], c2ws (B, V, 4, 4), Ks (B, V, 3, 3) normalized ->
    (features (B, V, L, C), spatial_shapes ((h_low, w_low), (h_high, w_high))) with L = Σ h·w.

    H and W must be multiples of 4 and of the DINO patch size (the high level is 2·H/patch).
    """

    config: Any  # the `encoder` ConfigDict
    dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, images, c2ws, Ks):
        cfg = self.config
        b, v, h, w, _ = images.shape
        if h % 4 or w % 4 or h % cfg.dino_patch or w % cfg.dino_patch:
            raise ValueError(f"image size {h}x{w} must be a multiple of 4 and of patch {cfg.dino_patch}")
        x = imagenet_normalize(images.reshape(b * v, h, w, 3).astype(jnp.float32))
        feats = Dinov2Backbone(cfg.dino_hidden, cfg.dino_layers, cfg.dino_heads, cfg.dino_mlp_ratio,
                               cfg.dino_patch, cfg.dino_pos_grid, cfg.dino_ln_eps, self.dtype,
                               self.attention_impl, name="dino")(x)
        bn = lambda name: nn.BatchNorm(use_running_average=True, epsilon=cfg.bn_eps, dtype=self.dtype,
                                       name=name)
        high = bn("deconv_bn")(ConvTranspose2d(cfg.feat_dim, dtype=self.dtype, name="deconv")(feats))
        rays = geometry.plucker_embedding(c2ws.reshape(b * v, 4, 4), Ks.reshape(b * v, 3, 3), h, w)
        low_in = jnp.concatenate([x, rays], axis=-1).astype(self.dtype)
        low = PatchConv(cfg.feat_dim, 4, use_bias=False, dtype=self.dtype, name="low_conv")(low_in)
        low = bn("low_bn")(low)
        shapes = ((low.shape[1], low.shape[2]), (high.shape[1], high.shape[2]))
        out = jnp.concatenate([low.reshape(b, v, -1, cfg.feat_dim), high.reshape(b, v, -1, cfg.feat_dim)], 2)
        self.sow("intermediates", "dino_last_feature_map", feats)
        self.sow("intermediates", "image_feats", out)
        return out, shapes
