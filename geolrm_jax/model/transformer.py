"""GeoLRM transformer (original `GeoTransformer`): 3D-RoPE self-attention, multi-view deformable
cross-attention and SwiGLU FFN, stacked with `nn.scan` over layers.

Block, pre-norm, with the original's residual quirk in the cross-attention:
    h   = x + SelfAttn(RMSNorm(x))
    c   = CrossAttn(RMSNorm(h))        # returns output_proj(...) + RMSNorm(h): the un-normalized h is dropped
    out = c + FFN(RMSNorm(c))
Intermediates (collection "intermediates", only when it is mutable): per layer `self_attention_out`,
`cross_attention_out`, `feed_forward_out` (stacked on axis 0 by the scan) and `reference_points_cam`.

With attention over tokens, `GeoTransformer` reorders the tokens valid-first once (stable), so that every
layer's key-padding mask is a sequence length (no per-layer sort or gathers), and restores the caller's order
on the way out; every other part of a block is per token.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from geolrm_kernels.deformable import api as deformable

from geolrm_jax import geometry
from geolrm_jax.model.config import ffn_hidden_dim
from geolrm_jax.model.dinov2 import attention

NUM_LEVELS = 2


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x²) + eps) · weight in float32, rounded once to `dtype` (the original computes it in
    float32 and its next bf16 matrix product rounds it)."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * weight.astype(jnp.float32)).astype(self.dtype)


def rope_grid_index(xyzs, xyz_scale: float, grid_size: int):
    """Integer RoPE positions (..., 3) = int((xyz / xyz_scale + 1)·(grid_size - 1)/2), truncated toward 0."""
    idx = (xyzs.astype(jnp.float32) / xyz_scale + 1.0) * (grid_size - 1) / 2.0
    return jnp.trunc(idx).astype(jnp.int32)


def rope3d_tables(grid_idx, head_dim: int, theta: float = 10000.0):
    """cos, sin (..., 3, Q) with Q = head_dim / 6: angle = idx[..., t] · theta^(-i/Q)."""
    if head_dim % 6:
        raise ValueError(f"3D RoPE needs head_dim divisible by 6, got {head_dim}")
    q = head_dim // 6
    inv_freq = 1.0 / (theta ** (jnp.arange(q, dtype=jnp.float32) / q))
    angle = grid_idx.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angle), jnp.sin(angle)


def apply_rope3d(x, cos, sin):
    """x (B, S, H, D); cos/sin (B, S, 3, Q). Third t of D = [u (Q) | v (Q)] rotates with axis t:
    u' = u·cos − v·sin, v' = v·cos + u·sin (layout of the original cuRoPE3D kernel)."""
    b, s, h, d = x.shape
    q = d // 6
    xr = x.astype(jnp.float32).reshape(b, s, h, 3, 2, q)
    c = cos[:, :, None, :, None, :]
    signed_sin = sin[:, :, None, :, None, :] * jnp.asarray([-1.0, 1.0], jnp.float32)[:, None]
    # [u, v]·cos + [v, u]·[-sin, sin]: one elementwise pass (a stack of the two halves ran at half bandwidth)
    out = xr * c + xr[..., ::-1, :] * signed_sin
    return out.reshape(b, s, h, d).astype(x.dtype)


def attention_over_heads(q, k, v):
    """The original's float32 self-attention path, reproduced exactly.

    `torch.matmul(xq, xk.transpose(2, 3))` on (B, S, H, D) tensors attends over the H heads of each token (an
    H×H softmax per token, where RoPE cancels out), and `.transpose(1, 2).contiguous().view(B, S, -1)` then
    re-reads the (B, H, S, D) buffer as (B, S, H·D), so output token s gathers rows of tokens s·H..s·H+H−1.
    The original's bf16 path (flash-attn) computes ordinary attention over tokens instead.
    """
    b, s, h, d = q.shape
    scores = jnp.einsum("bshd,bsgd->bshg", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bshg,bsgd->bshd", probs, v)
    return out.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def take_tokens(t, idx, axis: int = 1):
    """t[b, ..., idx[b, s], ...]: t gathered along its token axis `axis` by idx (B, S) int."""
    shape = [1] * t.ndim
    shape[0], shape[axis] = idx.shape
    return jnp.take_along_axis(t, idx.reshape(shape), axis=axis)


def masked_token_attention(q, k, v, key_mask, implementation=None):
    """Attention over tokens in which keys with key_mask False are ignored.

    Tokens are stably reordered valid-first so that the mask becomes a sequence length, which both the XLA
    and the cuDNN flash-attention implementations take; the output is put back in the original order.
    """
    perm = jnp.argsort(~key_mask, axis=1, stable=True)
    gather = lambda t, idx: jnp.take_along_axis(t, idx[:, :, None, None], axis=1)
    lengths = jnp.maximum(jnp.sum(key_mask, axis=1), 1).astype(jnp.int32)
    out = attention(gather(q, perm), gather(k, perm), gather(v, perm), implementation=implementation,
                    key_value_seq_lengths=lengths)
    return gather(out, jnp.argsort(perm, axis=1))


class SelfAttention(nn.Module):
    """wq, wk, wv, wo (no bias) with 3D RoPE on q and k. Attention over tokens with a key-padding mask
    (`jax.nn.dot_product_attention`), or, with `over_heads`, the original's float32 path (see
    `attention_over_heads`; it ignores the mask, as the original does)."""

    dim: int
    heads: int
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    over_heads: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, key_mask, key_lengths=None):
        """x (B, S, dim); cos, sin (B, S, 3, head_dim/6); key_mask (B, S) bool. key_lengths (B,) int32, when
        given, says the valid tokens come first (the first key_lengths[b] of each row): no reordering."""
        b, s, _ = x.shape
        hd = self.dim // self.heads
        dense = functools.partial(nn.Dense, self.dim, use_bias=False, dtype=self.dtype)
        q, k, v = (dense(name=n)(x).reshape(b, s, self.heads, hd) for n in ("wq", "wk", "wv"))
        q, k = apply_rope3d(q, cos, sin), apply_rope3d(k, cos, sin)
        if self.over_heads:
            out = attention_over_heads(q, k, v)
        elif key_lengths is not None:
            out = attention(q, k, v, implementation=self.attention_impl, key_value_seq_lengths=key_lengths)
        else:
            out = masked_token_attention(q, k, v, key_mask, self.attention_impl)
        return dense(name="wo")(out.reshape(b, s, self.dim))


BIAS_COLUMNS = 8  # [1, 0, ..., 0] appended to the image features: keeps the contraction a multiple of 8


def with_bias_columns(feats):
    """feats (..., C) -> (..., C + BIAS_COLUMNS) = [feats, 1, 0, ..., 0], the input of `BiasInMatmulDense`."""
    extra = jnp.zeros(feats.shape[:-1] + (BIAS_COLUMNS,), feats.dtype).at[..., 0].set(1)
    return jnp.concatenate([feats, extra], axis=-1)


class BiasInMatmulDense(nn.Module):
    """nn.Dense (same parameters `kernel` (C, F) and `bias` (F,), same initializers) on inputs that carry
    their own ones column (`with_bias_columns`): y = [x, 1, 0…] @ [kernel; bias; 0…].

    The bias is added inside the matrix product, so no separate elementwise pass over the output is needed
    where the output goes straight into a custom call (the value maps: one full read and write per layer)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_with_bias_columns):
        c = x_with_bias_columns.shape[-1] - BIAS_COLUMNS
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        w = jnp.concatenate([kernel, bias[None], jnp.zeros((BIAS_COLUMNS - 1, self.features), kernel.dtype)])
        return jnp.dot(x_with_bias_columns.astype(self.dtype), w.astype(self.dtype))


class DeformableCrossAttention(nn.Module):
    """Multi-view deformable cross-attention (original MSDCAWrapper + MSDeformableAttention3D).

    Offsets and weights come from the query once and are shared by every view. Returns output_proj(view
    softmax-weighted sum) + query (the residual of the original, on the normalized query). `feats` are the
    image features with their bias columns (`with_bias_columns`), (B, V, L, dim + BIAS_COLUMNS).
    """

    dim: int
    heads: int
    num_points: int
    spatial_shapes: tuple
    dtype: Any = jnp.float32
    sample_impl: str | None = None

    @nn.compact
    def __call__(self, query, feats, ref_points, view_mask, query_mask, query_order=None):
        b, s, _ = query.shape
        v, length = feats.shape[1], feats.shape[2]
        hc = self.dim // self.heads
        nl, p = NUM_LEVELS, self.num_points
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        value = BiasInMatmulDense(self.dim, self.dtype, name="value_proj")(feats)
        value = value.reshape(b, v, length, self.heads, hc)
        offsets = dense(self.heads * nl * p * 2, name="sampling_offsets")(query)
        offsets = offsets.astype(jnp.float32).reshape(b, s, self.heads, nl, p, 2)
        normalizer = jnp.asarray([[w, h] for h, w in self.spatial_shapes], jnp.float32)  # (NL, 2) = (w, h)
        offsets = offsets / normalizer[:, None, :]
        logits = dense(self.heads * nl * p, name="attention_weights")(query).astype(jnp.float32)
        weights = jax.nn.softmax(logits.reshape(b, s, self.heads, nl * p), -1).reshape(b, s, self.heads, nl, p)
        sampled = deformable.deformable_sample(value, ref_points, offsets, weights, tuple(self.spatial_shapes),
                                               view_mask, query_mask, implementation=self.sample_impl,
                                               query_order=query_order)
        sampled = sampled.reshape(b, v, s, self.dim).astype(self.dtype)
        view_logits = dense(1, name="cross_view_weight")(sampled)[..., 0].astype(jnp.float32)  # (B, V, S)
        view_logits = jnp.where(view_mask[:, :, None], view_logits, -1e30)
        view_w = jax.nn.softmax(view_logits, axis=1)
        fused = jnp.einsum("bvs,bvsd->bsd", view_w, sampled.astype(jnp.float32)).astype(self.dtype)
        return dense(self.dim, name="output_proj")(fused) + query


class FeedForward(nn.Module):
    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        hidden = ffn_hidden_dim(self.dim)
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype)
        return dense(self.dim, name="w2")(nn.silu(dense(hidden, name="w1")(x)) * dense(hidden, name="w3")(x))


class GeoTransformerBlock(nn.Module):
    """One block; scanned over layers. Carry: (B, S, dim) stream."""

    dim: int
    heads: int
    num_points: int
    spatial_shapes: tuple
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    sample_impl: str | None = None
    attention_over_heads: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, query_mask, key_lengths, feats, ref_points, view_mask, inverse, query_order):
        norm = functools.partial(RMSNorm, self.norm_eps, self.dtype)
        sa = SelfAttention(self.dim, self.heads, self.dtype, self.attention_impl, self.attention_over_heads,
                           name="self_attention")(
            norm(name="self_attention_norm")(x), cos, sin, query_mask, key_lengths)
        h = x + sa.astype(jnp.float32)  # residual stream stays float32 (as under torch autocast)
        ca = DeformableCrossAttention(self.dim, self.heads, self.num_points, self.spatial_shapes, self.dtype,
                                      self.sample_impl, name="cross_attention")(
            # float32 output: it is also the residual of the cross-attention (the original's `h.float()`)
            RMSNorm(self.norm_eps, jnp.float32, name="cross_attention_norm")(h), feats, ref_points, view_mask,
            query_mask, query_order)
        ff = FeedForward(self.dim, self.dtype, name="feed_forward")(norm(name="ffn_norm")(ca))
        if self.is_mutable_collection("intermediates"):  # in the caller's token order
            unpermute = (lambda t: t) if inverse is None else functools.partial(take_tokens, idx=inverse)
            self.sow("intermediates", "self_attention_out", unpermute(sa))
            self.sow("intermediates", "cross_attention_out", unpermute(ca))
            self.sow("intermediates", "feed_forward_out", unpermute(ff))
        return ca.astype(jnp.float32) + ff.astype(jnp.float32), None


class GeoTransformer(nn.Module):
    """xyzs (B, S, 3), query_mask (B, S) bool, feats (B, V, L, C), c2ws (B, V, 4, 4), Ks (B, V, 3, 3),
    view_mask (B, V) bool -> latents (B, S, dim) float32 after the final RMSNorm.

    ``spatial_shapes`` (the levels of ``feats``, static) is the attribute or, where the module is built before
    the image size is known, the call's argument."""

    dim: int
    layers: int
    heads: int
    num_points: int
    grid_size: int
    xyz_scale: float
    spatial_shapes: tuple
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    attention_impl: str | None = None
    sample_impl: str | None = None
    attention_over_heads: bool = False
    scan_unroll: int = 1  # layers per iteration of the scan's loop (`layers` = fully unrolled)

    @nn.compact
    def __call__(self, xyzs, query_mask, feats, c2ws, Ks, view_mask, spatial_shapes=None):
        spatial_shapes = tuple(spatial_shapes or self.spatial_shapes)
        b, s, _ = xyzs.shape
        ref_points = geometry.project_points(xyzs[:, None], c2ws, Ks)  # (B, V, S, 2)
        self.sow("intermediates", "reference_points_cam", ref_points)
        key_lengths = inverse = None
        if not self.attention_over_heads:  # that path mixes tokens by index (see attention_over_heads)
            # Valid tokens first, once for all layers, so that the key-padding mask is a sequence length.
            perm = jnp.argsort(~query_mask, axis=1, stable=True)
            inverse = jnp.argsort(perm, axis=1)
            xyzs, query_mask = take_tokens(xyzs, perm), take_tokens(query_mask, perm)
            ref_points = take_tokens(ref_points, perm, axis=2)
            key_lengths = jnp.maximum(jnp.sum(query_mask, axis=1), 1).astype(jnp.int32)
        # the sampling kernels' visiting order depends only on the points and masks: once for all layers
        query_order = deformable.kernel_query_order(ref_points, view_mask, query_mask, implementation=self.sample_impl)
        token = self.param("query_token", nn.initializers.normal(1.0), (self.dim - 3,))
        h = jnp.concatenate([xyzs.astype(jnp.float32), jnp.broadcast_to(token, (b, s, self.dim - 3))], -1)
        cos, sin = rope3d_tables(rope_grid_index(xyzs, self.xyz_scale, self.grid_size), self.dim // self.heads)
        block = GeoTransformerBlock
        if self.remat:
            block = nn.remat(block, prevent_cse=False, policy=getattr(jax.checkpoint_policies, self.remat_policy))
        stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * 9, length=self.layers, unroll=self.scan_unroll)
        h, _ = stack(self.dim, self.heads, self.num_points, spatial_shapes, self.norm_eps,
                     self.dtype, self.attention_impl, self.sample_impl, self.attention_over_heads, name="layers")(
            h, cos, sin, query_mask, key_lengths, with_bias_columns(feats.astype(self.dtype)), ref_points, view_mask,
            inverse, query_order)
        out = RMSNorm(self.norm_eps, jnp.float32, name="norm")(h)  # float32 latents, as the original's
        return out if inverse is None else take_tokens(out, inverse)


def geo_transformer(config, network, dtype, spatial_shapes=(), **kwargs) -> GeoTransformer:
    """The GeoTransformer of one network of the model: ``network`` is ``config.proposal`` or
    ``config.reconstruction``; the rest (norm, remat, attention and sampling implementations) from ``config``."""
    return GeoTransformer(network.dim, network.layers, network.heads, network.num_points, network.grid_size,
                          network.xyz_scale, spatial_shapes, config.norm_eps, dtype, config.remat, config.remat_policy,
                          config.attention_impl, config.sample_impl, config.attention_over_heads,
                          scan_unroll=config.get("scan_unroll", 1), **kwargs)
