"""Architecture configs of GeoLRM (ml_collections ConfigDicts).

Fields:
  encoder:        image encoder shared in shape by both networks (each network owns its own weights).
    dino_hidden, dino_layers, dino_heads, dino_mlp_ratio, dino_patch, dino_pos_grid (side of the trained
    position grid: 37 for 518 px), dino_ln_eps, feat_dim (C of the hierarchical features), bn_eps.
  proposal:       original `TransformerSerializer`.
    dim, layers, heads, grid_size (occupancy grid G), token_res (each token decodes token_res³ voxels),
    num_points (deformable points per level), xyz_scale, capacity (max anchors kept = original max_seq_len).
  reconstruction: original `GeoLRM` (lrm_generator).
    dim, layers, heads, grid_size (RoPE grid), num_points, gs_per_token, offset_max, scale_max, xyz_scale.
  dtype:          "float32" or "bfloat16" compute dtype; params always stay float32. The bf16 mode follows the
                  original's autocast (docs/model.md, "bf16 mode"): matrix products in bf16, norms, softmaxes
                  and residual streams in float32.
  decoder_dtype:  compute dtype of the Gaussian decoder (latent MLP, activations, quaternion normalization),
                  whatever `dtype` is: "float32" (default) as the original, whose `get_gaussians` runs outside
                  its bf16 autocast; "bfloat16" only to measure what float32 costs (its rotations are off by
                  up to 0.1).
  remat:          rematerialize each transformer block in the backward pass.
  remat_policy:   name of a `jax.checkpoint_policies` member used when remat is on.
  attention_impl: `jax.nn.dot_product_attention` implementation: None = cuDNN on GPU when dtype/shape allow,
                  XLA otherwise; or "xla" / "cudnn".
  sample_impl:    `deformable_sample` implementation (None = automatic by backend).
  norm_eps:       RMSNorm eps (1e-5 in the original).
  scan_unroll:    transformer layers per iteration of the layer loop (`nn.scan(unroll=...)`; values past a
                  network's layer count unroll it fully); speed only. The official config unrolls fully (16):
                  6-view bf16 inference 46.8 vs 48.2 ms on an H100 (docs/model.md); the training configs keep 1
                  (their benchmarks were measured with it).
  attention_over_heads: True reproduces the original's float32 self-attention code path (an H×H softmax over
                  the heads of each token followed by a token-scrambling reshape, see
                  transformer.attention_over_heads) — what the released inference config (use_bf16: false)
                  runs and what the geolrm_small fixture records. False = ordinary attention over anchors with
                  a key-padding mask and cuDNN flash attention (the original's bf16 / flash-attn path).
"""

from __future__ import annotations

import ml_collections


def _base(encoder, proposal, reconstruction) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.encoder = ml_collections.ConfigDict(encoder)
    cfg.proposal = ml_collections.ConfigDict(proposal)
    cfg.reconstruction = ml_collections.ConfigDict(reconstruction)
    cfg.dtype = "float32"
    cfg.decoder_dtype = "float32"
    cfg.remat = False
    cfg.remat_policy = "nothing_saveable"
    cfg.attention_impl = ml_collections.FieldReference(None, field_type=str)
    cfg.sample_impl = ml_collections.FieldReference(None, field_type=str)
    cfg.norm_eps = 1e-5
    cfg.attention_over_heads = True
    cfg.scan_unroll = 1
    return cfg


def official_model_config() -> ml_collections.ConfigDict:
    """The released GeoLRM architecture (configs/geolrm.yaml of the original, DINOv2-B/14 encoders)."""
    cfg = _base(
        encoder=dict(dino_hidden=768, dino_layers=12, dino_heads=12, dino_mlp_ratio=4, dino_patch=14,
                     dino_pos_grid=37, dino_ln_eps=1e-6, feat_dim=384, bn_eps=1e-5),
        proposal=dict(dim=384, layers=6, heads=16, grid_size=128, token_res=8, num_points=8,
                      xyz_scale=0.5, capacity=8192),
        reconstruction=dict(dim=768, layers=16, heads=16, grid_size=128, num_points=8, gs_per_token=32,
                            offset_max=0.2, scale_max=0.02, xyz_scale=0.5),
    )
    cfg.scan_unroll = cfg.reconstruction.layers
    return cfg


def tiny_model_config() -> ml_collections.ConfigDict:
    """A ~140k-parameter model for CPU tests (28 px images: 2×2 DINO patches, 7×7 low level).

    It uses ordinary masked attention over anchors (attention_over_heads=False), so the tests cover that path
    while the fixture parity covers the original's float32 path."""
    cfg = _base(
        encoder=dict(dino_hidden=24, dino_layers=1, dino_heads=2, dino_mlp_ratio=2, dino_patch=14,
                     dino_pos_grid=4, dino_ln_eps=1e-6, feat_dim=8, bn_eps=1e-5),
        proposal=dict(dim=24, layers=2, heads=2, grid_size=8, token_res=2, num_points=2,
                      xyz_scale=0.5, capacity=16),
        reconstruction=dict(dim=24, layers=2, heads=2, grid_size=8, num_points=2, gs_per_token=2,
                            offset_max=0.2, scale_max=0.02, xyz_scale=0.5),
    )
    cfg.attention_over_heads = False
    return cfg


def demo_model_config() -> ml_collections.ConfigDict:
    """The demo model shipped with the package (configs/demo.py trains it): the GeoLRM architecture at about
    8M parameters, 256 px inputs (16 px patches), a 32³ occupancy grid and up to 4096 anchors × 32 Gaussians."""
    cfg = _base(
        encoder=dict(dino_hidden=192, dino_layers=4, dino_heads=3, dino_mlp_ratio=4, dino_patch=16,
                     dino_pos_grid=16, dino_ln_eps=1e-6, feat_dim=64, bn_eps=1e-5),
        proposal=dict(dim=144, layers=4, heads=4, grid_size=32, token_res=2, num_points=4,
                      xyz_scale=0.5, capacity=4096),
        reconstruction=dict(dim=192, layers=6, heads=4, grid_size=32, num_points=4, gs_per_token=32,
                            offset_max=0.08, scale_max=0.02, xyz_scale=0.5),
    )
    cfg.attention_over_heads = False
    cfg.input_size = 256
    return cfg


def config_from_fixture(cfg_json: dict, source: str = "config.json") -> ml_collections.ConfigDict:
    """Model config from a geolrm_small-format `config.json` (keys serializer, lrm_generator, dinov2_config).

    Raises ValueError naming the missing field.
    """

    def get(section: str, key: str):
        try:
            return cfg_json[section][key]
        except KeyError as e:
            raise ValueError(f"{source}: missing field {section}.{key}") from e

    dino = "dinov2_config"
    if get(dino, "use_swiglu_ffn"):
        raise ValueError(f"{source}: {dino}.use_swiglu_ffn=true is not supported (DINOv2-g only)")
    num_pos = get(dino, "image_size") // get(dino, "patch_size")
    srl, gen = "serializer", "lrm_generator"
    if get(srl, "encoder_feat_dim") != get(gen, "encoder_feat_dim"):
        raise ValueError(f"{source}: serializer and lrm_generator encoder_feat_dim differ")
    if get(gen, "use_sh"):
        raise ValueError(f"{source}: lrm_generator.use_sh=true is not supported")
    xyz_scale = float(cfg_json.get("xyz_scale", get(srl, "scale")))
    return _base(
        encoder=dict(dino_hidden=get(dino, "hidden_size"), dino_layers=get(dino, "num_hidden_layers"),
                     dino_heads=get(dino, "num_attention_heads"), dino_mlp_ratio=get(dino, "mlp_ratio"),
                     dino_patch=get(dino, "patch_size"), dino_pos_grid=num_pos,
                     dino_ln_eps=get(dino, "layer_norm_eps"), feat_dim=get(srl, "encoder_feat_dim"),
                     bn_eps=1e-5),
        proposal=dict(dim=get(srl, "transformer_dim"), layers=get(srl, "transformer_layers"),
                      heads=get(srl, "transformer_heads"), grid_size=get(srl, "grid_size"),
                      token_res=get(srl, "token_res"), num_points=get(srl, "num_deform_points"),
                      xyz_scale=float(get(srl, "scale")), capacity=get(srl, "max_seq_len")),
        reconstruction=dict(dim=get(gen, "transformer_dim"), layers=get(gen, "transformer_layers"),
                            heads=get(gen, "transformer_heads"), grid_size=get(gen, "grid_size"),
                            num_points=get(gen, "num_deform_points"), gs_per_token=get(gen, "gs_per_token"),
                            offset_max=float(get(gen, "offset_max")), scale_max=float(get(gen, "scale_max")),
                            xyz_scale=xyz_scale),
    )


def ffn_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """SwiGLU hidden size of the original: ceil(int(2·4·dim/3) / multiple_of) · multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)
