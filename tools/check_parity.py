"""Compare the JAX GeoLRM with reference outputs of the original (a geolrm_small-format directory).

    python tools/check_parity.py --fixture ../shared/fixtures/geolrm_small [--dtype bfloat16]
        [--reference outputs.npz] [--token-attention]

The directory holds config.json, state_dict.safetensors (or state_dict.pt), inputs.npz and outputs.npz (see
the fixture README); `tools/make_parity_fixture_released.py` makes one at the released widths. Prints max abs
and relative error (max|a−b| / max|b|) for every array of the reference file (outputs.npz, the original in
float32) and exits 1 if any relative error exceeds the tolerance (1e-4 in float32, 5e-2 in bfloat16), 2 on bad
input. `--reference outputs_fp32_tokens.npz --token-attention` checks the original's other attention branch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np


def _load_inputs(fixture: str):
    path = os.path.join(fixture, "inputs.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing {path}")
    data = np.load(path)
    for key in ("images", "c2ws", "Ks", "xyzs"):
        if key not in data.files:
            raise ValueError(f"{path}: missing array {key!r}")
    return data


def compute_outputs(fixture: str, dtype: str = "float32", attention_over_heads: bool = True) -> dict[str, np.ndarray]:
    """Run the JAX model on the fixture inputs; returns arrays named and laid out like outputs.npz.

    attention_over_heads False swaps in ordinary attention over anchors (for comparison only: the fixture
    records the original's float32 path, which attends over heads)."""
    from geolrm_jax import geometry
    from geolrm_jax.model.config import config_from_fixture
    from geolrm_jax.model.convert import convert_state_dict, load_state_dict
    from geolrm_jax.model.decoder import gaussians_to_array
    from geolrm_jax.model.geolrm import GeoLRM

    cfg_path = os.path.join(fixture, "config.json")
    with open(cfg_path) as f:
        config = config_from_fixture(json.load(f), source=cfg_path)
    config.dtype = dtype
    config.attention_over_heads = attention_over_heads
    sd_path = os.path.join(fixture, "state_dict.safetensors")
    if not os.path.exists(sd_path):
        sd_path = os.path.join(fixture, "state_dict.pt")
    variables, _ = convert_state_dict(load_state_dict(sd_path), config)
    data = _load_inputs(fixture)
    images = jnp.asarray(data["images"], jnp.float32).transpose(0, 1, 3, 4, 2)  # -> (B, V, H, W, 3)
    c2ws, Ks = jnp.asarray(data["c2ws"], jnp.float32), jnp.asarray(data["Ks"], jnp.float32)
    xyzs = jnp.asarray(data["xyzs"], jnp.float32)
    if "xyz_scale" in data.files and abs(float(data["xyz_scale"]) - config.reconstruction.xyz_scale) > 1e-7:
        raise ValueError(f"inputs.npz xyz_scale {float(data['xyz_scale'])} != config {config.reconstruction.xyz_scale}")
    b, v, h, w, _ = images.shape
    view_mask = jnp.ones((b, v), bool)
    model = GeoLRM(config)

    propose = jax.jit(lambda var: model.apply(var, images, c2ws, Ks, view_mask, method=model.propose,
                                              mutable=["intermediates"]))
    anchor_mask = jnp.ones(xyzs.shape[:2], bool)
    reconstruct = jax.jit(lambda var: model.apply(var, images, c2ws, Ks, view_mask, xyzs, anchor_mask,
                                                  method=model.reconstruct, mutable=["intermediates"]))
    occ, st1 = propose(variables)
    gaussians, st2 = reconstruct(variables)
    it1, it2 = st1["intermediates"]["proposal"], st2["intermediates"]["reconstruction"]
    nchw = lambda x: np.asarray(x, np.float32).transpose(0, 3, 1, 2)
    out = {}
    for name, it in (("serializer", it1), ("lrm_generator", it2)):
        out[f"{name}__dino_last_feature_map"] = nchw(it["encoder"]["dino_last_feature_map"][0])
        feats = it["encoder"]["image_feats"][0]
        out[f"{name}__image_feats"] = np.asarray(feats, np.float32)
    # spatial shapes are static: low level H/4, high level 2·H/patch
    patch = config.encoder.dino_patch
    shapes = np.asarray([[h // 4, w // 4], [2 * (h // patch), 2 * (w // patch)]], np.int64)
    out["serializer__spatial_shapes"] = out["lrm_generator__spatial_shapes"] = shapes
    rays = geometry.plucker_embedding(c2ws.reshape(b * v, 4, 4), Ks.reshape(b * v, 3, 3), h, w)
    out["ray_embedding"] = nchw(rays)
    out["occupancy_logits"] = np.asarray(occ, np.float32)
    tr = it2["transformer"]
    out["reference_points_cam"] = np.asarray(tr["reference_points_cam"][0], np.float32)
    for key in ("self_attention_out", "cross_attention_out", "feed_forward_out"):
        out[f"layer0__{key}"] = np.asarray(tr["layers"][key][0][0], np.float32)
    out["latents"] = np.asarray(it2["latents"][0], np.float32)
    out["gaussians"] = np.asarray(gaussians_to_array(gaussians), np.float32)
    return out


def compare(ours: dict, reference: dict) -> dict[str, tuple[float, float]]:
    """{name: (max abs error, relative error)} for every reference array; raises KeyError for unknown names."""
    errors = {}
    for name in reference:
        if name not in ours:
            raise KeyError(f"the reference holds {name!r}, which this tool does not know how to reproduce")
        a, b = np.asarray(ours[name], np.float64), np.asarray(reference[name], np.float64)
        if a.shape != b.shape:
            raise ValueError(f"{name}: shape {a.shape} != reference {b.shape}")
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        rel = diff / scale if scale > 0 else diff
        errors[name] = (diff if np.isfinite(diff) else float("inf"), rel if np.isfinite(rel) else float("inf"))
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", required=True, help="directory in the geolrm_small format")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--reference", default="outputs.npz", help="reference arrays in the fixture directory")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max relative error (default 1e-4 for float32, 5e-2 for bfloat16)")
    parser.add_argument("--token-attention", action="store_true",
                        help="use ordinary attention over anchors instead of the original's float32 path "
                             "(expected to FAIL: shows which path the reference took)")
    parser.add_argument("--precision", default="highest", choices=("default", "high", "highest"),
                        help="jax default matmul precision (highest keeps GPUs off TF32)")
    args = parser.parse_args(argv)
    tol = args.tolerance if args.tolerance is not None else (1e-4 if args.dtype == "float32" else 5e-2)
    out_path = os.path.join(args.fixture, args.reference)
    try:
        if not os.path.exists(out_path):
            raise FileNotFoundError(f"missing {out_path}")
        reference = dict(np.load(out_path))
        with jax.default_matmul_precision(args.precision):
            ours = compute_outputs(args.fixture, args.dtype, attention_over_heads=not args.token_attention)
        errors = compare(ours, reference)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'output':36s} {'max abs err':>12s} {'rel err':>12s}   (dtype {args.dtype}, tolerance {tol:g}, "
          f"device {jax.devices()[0].platform})")
    failed = []
    for name, (abs_err, rel) in errors.items():
        bad = not rel <= tol
        failed += [name] if bad else []
        print(f"{name:36s} {abs_err:12.3e} {rel:12.3e}{'   FAIL' if bad else ''}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("all outputs within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
