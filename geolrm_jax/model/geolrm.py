"""GeoLRM end to end: proposal network → anchor selection → reconstruction network → Gaussians.

Parameters live in two subtrees of `params` and `batch_stats`: `proposal` (original `serializer.*`) and
`reconstruction` (original `lrm_generator.*`), so stage 2 can freeze `proposal`.

Inputs (every method): images (B, V, H, W, 3) in [0, 1]; c2ws (B, V, 4, 4) OpenGL camera-to-world; Ks
(B, V, 3, 3) normalized intrinsics; view_mask (B, V) bool. V is a static maximum: padded views (mask False)
are replaced by a dummy camera, then excluded from the cross-view softmax, so 1..V views run through one
compiled function.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax.model.decoder import GaussianDecoder
from geolrm_jax.model.encoder import HierarchicalEncoder
from geolrm_jax.model.proposal import ProposalNetwork, select_anchors
from geolrm_jax.model.transformer import geo_transformer
from geolrm_jax.render.gaussians import Gaussians

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

#: XLA compiler options of the inference programs (``Reconstructor``, ``geolrm-jax bench``); measured with
#: ``tools/bench/e2e_variants.py`` (docs/model.md). Options of another backend are ignored by the compiler.
INFERENCE_COMPILER_OPTIONS: dict[str, Any] = {}


def compute_dtype(config) -> Any:
    if config.dtype not in _DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}")
    return _DTYPES[config.dtype]


def decoder_dtype(config) -> Any:
    """Compute dtype of the Gaussian decoder: float32 unless `config.decoder_dtype` says otherwise."""
    name = config.get("decoder_dtype", "float32")
    if name not in _DTYPES:
        raise ValueError(f"config.decoder_dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def sanitize_cameras(c2ws, Ks, view_mask):
    """Replace the cameras of padded views by a valid dummy (identity pose, unit intrinsics) so that no
    NaN from a singular pose can leak through a zero weight."""
    m = view_mask[..., None, None]
    dummy_k = jnp.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], jnp.float32)
    c2ws = jnp.where(m, c2ws.astype(jnp.float32), jnp.eye(4, dtype=jnp.float32))
    Ks = jnp.where(m, Ks.astype(jnp.float32), dummy_k)
    return c2ws, Ks


class ReconstructionNetwork(nn.Module):
    """Original `lrm_generator`: (images, cameras, anchors (B, S, 3), anchor_mask (B, S)) -> Gaussians.

    Its stages are methods too: ``encoder`` (images -> features, spatial shapes), ``latents`` (features ->
    per-anchor latents) and ``decoder`` (latents -> Gaussians)."""

    config: Any
    dtype: Any = jnp.float32

    def setup(self):
        cfg, rc = self.config, self.config.reconstruction
        self.encoder = HierarchicalEncoder(cfg.encoder, self.dtype, cfg.attention_impl)
        self.transformer = geo_transformer(cfg, rc, self.dtype)
        self.decoder = GaussianDecoder(rc.gs_per_token, rc.offset_max, rc.scale_max, decoder_dtype(cfg))

    def latents(self, feats, spatial_shapes, c2ws, Ks, view_mask, anchors, anchor_mask):
        """Encoder features (B, V, L, C) with their static spatial shapes -> latents (B, S, dim) float32."""
        return self.transformer(anchors, anchor_mask, feats, c2ws, Ks, view_mask, spatial_shapes=spatial_shapes)

    def __call__(self, images, c2ws, Ks, view_mask, anchors, anchor_mask):
        feats, shapes = self.encoder(images, c2ws, Ks)
        latents = self.latents(feats, shapes, c2ws, Ks, view_mask, anchors, anchor_mask)
        self.sow("intermediates", "latents", latents)
        return self.decoder(latents, anchors, anchor_mask)


class GeoLRM(nn.Module):
    """The full model; see the module docstring for inputs. Pure functions of (variables, inputs)."""

    config: Any

    def setup(self):
        dtype = compute_dtype(self.config)
        decoder_dtype(self.config)  # validated before tracing
        self.proposal = ProposalNetwork(self.config, dtype)
        self.reconstruction = ReconstructionNetwork(self.config, dtype)

    def propose(self, images, c2ws, Ks, view_mask):
        """Stage 1 -> occupancy logits (B, G, G, G) float32, indexed [x, y, z]."""
        c2ws, Ks = sanitize_cameras(c2ws, Ks, view_mask)
        return self.proposal(images, c2ws, Ks, view_mask)

    def reconstruct(self, images, c2ws, Ks, view_mask, anchors, anchor_mask) -> Gaussians:
        """Stage 2 with given anchors (B, S, 3), anchor_mask (B, S) -> Gaussians (B, S·K, ...)."""
        c2ws, Ks = sanitize_cameras(c2ws, Ks, view_mask)
        return self.reconstruction(images, c2ws, Ks, view_mask, anchors, anchor_mask)

    # The stages of inference, each a method (``model.apply(variables, ..., method=GeoLRM.encode)``): what
    # ``geolrm-jax bench`` times. ``spatial_shapes``: static, from ``encoder.spatial_shapes(config.encoder, H, W)``.
    def encode(self, images, c2ws, Ks, view_mask):
        """-> (proposal features, reconstruction features), each (B, V, L, C): the two image encoders."""
        c2ws, Ks = sanitize_cameras(c2ws, Ks, view_mask)
        return self.proposal.encoder(images, c2ws, Ks)[0], self.reconstruction.encoder(images, c2ws, Ks)[0]

    def propose_from_features(self, feats, spatial_shapes, c2ws, Ks, view_mask):
        """Proposal features -> occupancy logits (B, G, G, G) float32 (then ``proposal.select_anchors``)."""
        c2ws, Ks = sanitize_cameras(c2ws, Ks, view_mask)
        return self.proposal.occupancy(feats, spatial_shapes, c2ws, Ks, view_mask)

    def reconstruct_latents(self, feats, spatial_shapes, c2ws, Ks, view_mask, anchors, anchor_mask):
        """Reconstruction features and anchors -> latents (B, S, dim) float32."""
        c2ws, Ks = sanitize_cameras(c2ws, Ks, view_mask)
        return self.reconstruction.latents(feats, spatial_shapes, c2ws, Ks, view_mask, anchors, anchor_mask)

    def decode(self, latents, anchors, anchor_mask) -> Gaussians:
        """Latents (B, S, dim) -> Gaussians (B, S·K, ...)."""
        return self.reconstruction.decoder(latents, anchors, anchor_mask)

    def __call__(self, images, c2ws, Ks, view_mask):
        """Full inference -> dict(occupancy_logits, anchors, anchor_mask, gaussians)."""
        logits = self.propose(images, c2ws, Ks, view_mask)
        pc = self.config.proposal
        anchors, anchor_mask = select_anchors(logits, pc.capacity, pc.xyz_scale)
        gaussians = self.reconstruct(images, c2ws, Ks, view_mask, anchors, anchor_mask)
        return {"occupancy_logits": logits, "anchors": anchors, "anchor_mask": anchor_mask,
                "gaussians": gaussians}


def kernel_dtype(config, path) -> Any:
    """The dtype a `kernel` leaf at tree path `path` (jax key path) computes in, None for other leaves:
    `config.decoder_dtype` inside the Gaussian decoder, the compute dtype elsewhere."""
    keys = [str(getattr(k, "key", k)) for k in path]
    if not keys or keys[-1] != "kernel":
        return None
    return decoder_dtype(config) if "decoder" in keys else compute_dtype(config)


def inference_variables(variables, config) -> dict:
    """variables with every matrix/convolution weight (`kernel` leaves) stored in the dtype it computes in.

    Dense and convolution layers cast their kernel to `config.dtype` on every call; casting once up front
    gives bit-identical outputs, saves that per-call pass over the weights and halves their memory in bf16.
    The Gaussian decoder's kernels are cast to `config.decoder_dtype` (float32: kept). Everything else
    (biases, norms, embeddings, BatchNorm statistics) keeps its dtype. A no-op in float32.
    Meant for inference: train on the float32 master weights."""

    def cast(path, leaf):
        target = kernel_dtype(config, path)
        return leaf.astype(target) if target is not None and leaf.dtype == jnp.float32 else leaf

    return jax.tree_util.tree_map_with_path(cast, variables)


def init_variables(config, rng) -> dict:
    """Freshly initialized {"params", "batch_stats"} of GeoLRM(config) (jitted `init` on a 1-view dummy
    input: no parameter shape depends on the image size or the number of views)."""
    side = int(np.lcm(4, config.encoder.dino_patch))
    images = jnp.zeros((1, 1, side, side, 3), jnp.float32)
    c2ws = jnp.broadcast_to(jnp.eye(4, dtype=jnp.float32), (1, 1, 4, 4))
    Ks = jnp.broadcast_to(jnp.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], jnp.float32),
                          (1, 1, 3, 3))
    view_mask = jnp.ones((1, 1), bool)
    return jax.jit(GeoLRM(config).init)(rng, images, c2ws, Ks, view_mask)
