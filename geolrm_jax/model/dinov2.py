"""DINOv2 ViT backbone with the numerics of Hugging Face `Dinov2Backbone` (feature_maps[-1]).

Images NHWC in, (N, H/p, W/p, hidden) patch features out: final LayerNorm applied, CLS token dropped.
The position embedding (trained on a `pos_grid`² grid) is resized to the input grid with torch's bicubic
interpolation (align_corners=False, A = -0.75, border-clamped taps, no antialias), exactly as HF's
`interpolate_pos_encoding(embeddings, height, width)` calls `F.interpolate(size=(h, w), mode="bicubic")`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.cache
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix M with M @ x == torch bicubic resize of x (align_corners=False)."""
    if in_size == out_size:
        return np.eye(in_size, dtype=np.float32)
    a = -0.75
    cc1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    cc2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)  # torch computes the source index in float32
    mat = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        src = f32(scale * (f32(i) + f32(0.5)) - f32(0.5))  # not clamped at 0 for cubic, as torch
        i0 = int(np.floor(src))
        t = float(f32(src - f32(i0)))
        weights = (cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t))
        for k, w in enumerate(weights):
            mat[i, min(max(i0 - 1 + k, 0), in_size - 1)] += w
    return mat.astype(np.float32)


def resize_pos_embed(pos: jax.Array, grid: int, out_h: int, out_w: int) -> jax.Array:
    """pos (grid², D) -> (out_h·out_w, D), bicubic in float32."""
    dim = pos.shape[-1]
    pos = pos.astype(jnp.float32).reshape(grid, grid, dim)
    my, mx = bicubic_matrix(grid, out_h), bicubic_matrix(grid, out_w)
    out = jnp.einsum("yi,ijd,xj->yxd", my, pos, mx, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(out_h * out_w, dim)


def attention(q, k, v, *, implementation=None, key_value_seq_lengths=None):
    """Softmax attention on (B, T, H, D) tensors via `jax.nn.dot_product_attention`.

    implementation None picks cuDNN (flash attention) on GPU for bf16/fp16 with head_dim % 8 == 0 and
    ≤ 128, and falls back to XLA where cuDNN refuses the shapes at trace time (e.g. its backward rejects
    DINOv2's 1025-token sequences); otherwise XLA. The XLA path computes the softmax in float32.
    key_value_seq_lengths (B,) int32: only the first n keys of each batch element are attended (a padding
    mask both implementations support).
    """
    call = functools.partial(jax.nn.dot_product_attention, q, k, v,
                             key_value_seq_lengths=key_value_seq_lengths)
    if implementation is not None:
        return call(implementation=implementation)
    if (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128):
        try:
            return call(implementation="cudnn")
        except NotImplementedError:  # cuDNN's shape checks run while tracing, forward or under grad
            pass
    return call(implementation="xla")


def gelu_erf(x):
    """torch.nn.GELU(): 0.5·x·(1 + erf(x/√2)), in float32, returned in x.dtype.

    Same function as `jax.nn.gelu(approximate=False)`, which evaluates it through erfc (exp and a second
    rational approximation, for its far tail): on the GPU that fusion took twice as long per DINOv2 layer."""
    x32 = x.astype(jnp.float32)
    return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * np.float32(1.0 / np.sqrt(2.0))))).astype(x.dtype)


class Dinov2Layer(nn.Module):
    hidden: int
    heads: int
    mlp_ratio: int
    eps: float
    dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        b, t, _ = x.shape
        hd = self.hidden // self.heads
        y = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm1")(x)
        q, k, v = (dense(self.hidden, name=n)(y).reshape(b, t, self.heads, hd)
                   for n in ("q_proj", "k_proj", "v_proj"))
        y = attention(q, k, v, implementation=self.attention_impl).reshape(b, t, self.hidden)
        y = dense(self.hidden, name="o_proj")(y)
        # the residual stream stays float32; branches are computed in `dtype` and scaled in float32
        x = x + y.astype(jnp.float32) * self.param("layer_scale1", nn.initializers.ones, (self.hidden,))
        y = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm2")(x)
        y = dense(self.hidden * self.mlp_ratio, name="fc1")(y)
        y = dense(self.hidden, name="fc2")(gelu_erf(y))
        return x + y.astype(jnp.float32) * self.param("layer_scale2", nn.initializers.ones, (self.hidden,))


class PatchConv(nn.Module):
    """nn.Conv with kernel = stride = `patch` and VALID padding (same parameters: `kernel` (p, p, in, out),
    optional `bias`, same initializers), computed as one matrix product over non-overlapping patches:
    (N, H, W, C) -> (N, H/p, W/p, features). cuDNN ran these few-channel strided convolutions through
    padding kernels and an unaligned implicit GEMM, several times slower than the plain product."""

    features: int
    patch: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"PatchConv: input {h}x{w} is not a multiple of the patch size {p}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.features))
        patches = x.astype(self.dtype).reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        y = jnp.dot(patches.reshape(n, h // p, w // p, p * p * c),
                    kernel.reshape(p * p * c, self.features).astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class Dinov2Backbone(nn.Module):
    """HF Dinov2Backbone last feature map. Input: ImageNet-normalized images (N, H, W, 3).

    Returns (N, H // patch, W // patch, hidden) float32. Param names follow HF (see convert.dinov2_from_hf).
    """

    hidden: int
    layers: int
    heads: int
    mlp_ratio: int = 4
    patch: int = 14
    pos_grid: int = 37
    eps: float = 1e-6
    dtype: Any = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(self, x):
        n = x.shape[0]
        x = PatchConv(self.hidden, self.patch, dtype=self.dtype, name="patch_embed")(x)
        gh, gw = x.shape[1], x.shape[2]
        x = x.reshape(n, gh * gw, self.hidden)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.hidden))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + self.pos_grid ** 2, self.hidden))
        patch_pos = resize_pos_embed(pos[0, 1:], self.pos_grid, gh, gw)
        x = jnp.concatenate([jnp.broadcast_to(cls + pos[:, :1], (n, 1, self.hidden)),
                             x.astype(jnp.float32) + patch_pos[None]], axis=1)
        for i in range(self.layers):
            x = Dinov2Layer(self.hidden, self.heads, self.mlp_ratio, self.eps, self.dtype,
                            self.attention_impl, name=f"layer_{i}")(x)
        x = nn.LayerNorm(epsilon=self.eps, dtype=jnp.float32, name="layernorm")(x)  # float32 as the original's
        return x[:, 1:].reshape(n, gh, gw, self.hidden)


def imagenet_normalize(images):
    """images (..., 3) in [0, 1] -> (x - mean) / std."""
    return (images - jnp.asarray(IMAGENET_MEAN, images.dtype)) / jnp.asarray(IMAGENET_STD, images.dtype)
