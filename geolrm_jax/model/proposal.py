"""Proposal network (original `TransformerSerializer`) and deterministic anchor selection.

(G/T)³ tokens at the grid `linspace(-1, 1, G/T)·xyz_scale` (all sharing the learnable query token) go through
the GeoTransformer; a Linear(dim → T³) per token is reshaped (B, f, f, f, T, T, T) and permuted
(0, 1, 4, 2, 5, 3, 6) into the (B, G, G, G) occupancy logits, indexed [x, y, z].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax.model.encoder import HierarchicalEncoder
from geolrm_jax.model.transformer import geo_transformer


def linspace_like_torch(n: int) -> np.ndarray:
    """torch.linspace(-1, 1, n) in float32, bit for bit: first half start + step·i, second half
    end − step·(n − 1 − i), each a fused multiply-add (one rounding) with a float32 step.

    The RoPE grid index truncates positions, so the last bit of each coordinate matters."""
    step = np.float64(np.float32(2.0) / np.float32(max(n - 1, 1)))
    i = np.arange(n)
    return np.where(i < n // 2, -1.0 + step * i, 1.0 - step * (n - 1 - i)).astype(np.float32)


def grid_points(n: int, scale: float) -> np.ndarray:
    """(n³, 3) float32 points of meshgrid(linspace(-1, 1, n) ×3, indexing='ij') · scale, row-major x, y, z."""
    lin = linspace_like_torch(n)
    pts = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1) * np.float32(scale)
    return pts.reshape(-1, 3).astype(np.float32)


def select_anchors(logits, capacity: int, xyz_scale: float):
    """Occupied voxels (logit > 0) into a fixed-capacity set.

    logits (B, G, G, G) -> anchors (B, capacity, 3) voxel centres, mask (B, capacity) bool. When more than
    `capacity` voxels are occupied, the ones with the highest logits are kept (deterministic; the original
    takes a random subset). Kept voxels are listed in raster (x, y, z) order as the original's boolean
    indexing does; padded slots hold (0, 0, 0) and mask False.
    """
    b, g = logits.shape[0], logits.shape[1]
    flat = logits.reshape(b, g ** 3).astype(jnp.float32)
    k = min(capacity, g ** 3)
    values, idx = jax.lax.top_k(flat, k)
    valid = values > 0
    order = jnp.argsort(jnp.where(valid, idx, idx + g ** 3), axis=-1)
    idx = jnp.take_along_axis(idx, order, -1)
    valid = jnp.take_along_axis(valid, order, -1)
    ix, iy, iz = idx // (g * g), (idx // g) % g, idx % g
    lin = jnp.asarray(linspace_like_torch(g))
    anchors = jnp.stack([lin[ix], lin[iy], lin[iz]], -1) * jnp.float32(xyz_scale)
    anchors = jnp.where(valid[..., None], anchors, 0.0)
    if k < capacity:
        anchors = jnp.pad(anchors, ((0, 0), (0, capacity - k), (0, 0)))
        valid = jnp.pad(valid, ((0, 0), (0, capacity - k)))
    return anchors, valid


class ProposalNetwork(nn.Module):
    """images (B, V, H, W, 3), c2ws, Ks, view_mask (B, V) -> occupancy logits (B, G, G, G) float32.

    Its two stages are methods too: ``encoder`` (images -> features, spatial shapes) and ``occupancy``
    (features -> logits)."""

    config: Any  # full model config
    dtype: Any = jnp.float32

    def setup(self):
        cfg, pc = self.config, self.config.proposal
        self.encoder = HierarchicalEncoder(cfg.encoder, self.dtype, cfg.attention_impl)
        self.transformer = geo_transformer(cfg, pc, self.dtype)
        self.upsample = nn.Dense(pc.token_res ** 3, dtype=self.dtype)

    def occupancy(self, feats, spatial_shapes, c2ws, Ks, view_mask):
        """Encoder features (B, V, L, C) with their static spatial shapes -> occupancy logits (B, G, G, G)."""
        pc = self.config.proposal
        b = feats.shape[0]
        f, t = pc.grid_size // pc.token_res, pc.token_res
        xyzs = jnp.broadcast_to(jnp.asarray(grid_points(f, pc.xyz_scale)), (b, f ** 3, 3))
        tokens = self.transformer(xyzs, jnp.ones((b, f ** 3), bool), feats, c2ws, Ks, view_mask,
                                  spatial_shapes=spatial_shapes)
        occ = self.upsample(tokens).astype(jnp.float32)
        occ = occ.reshape(b, f, f, f, t, t, t).transpose(0, 1, 4, 2, 5, 3, 6)
        return occ.reshape(b, pc.grid_size, pc.grid_size, pc.grid_size)

    def __call__(self, images, c2ws, Ks, view_mask):
        feats, shapes = self.encoder(images, c2ws, Ks)
        return self.occupancy(feats, shapes, c2ws, Ks, view_mask)
