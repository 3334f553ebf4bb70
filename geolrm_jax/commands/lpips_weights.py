"""``geolrm-jax lpips-weights``: LPIPS-VGG16 weights from PyTorch files -> the Flax ``.npz`` that training
(``train.lpips_weights``) and ``geolrm-jax eval --lpips-weights`` read (``load_lpips_params``).

Inputs:
  --vgg   torchvision's ImageNet VGG16 state dict, e.g. ``vgg16-397923af.pth`` (``torchvision.models.vgg16``
          weights; only ``features.*`` is used), loaded with ``torch.load(weights_only=True)``. Instead,
          ``--random-vgg-seed N`` writes a seeded RANDOM trunk (tests / tiny config only: not perceptual).
  --lin   the lpips package's ``lpips/weights/v0.1/vgg.pth`` (default: taken from the installed ``lpips``
          package) or an ``.npz`` of the same keys such as tests/fixtures/lpips_vgg_lin_v0.1.npz.

Usage:
  geolrm-jax lpips-weights --vgg vgg16-397923af.pth --out lpips_vgg16.npz
  geolrm-jax lpips-weights --random-vgg-seed 0 --lin tests/fixtures/lpips_vgg_lin_v0.1.npz \
      --out lpips_random_vgg.npz
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys

import numpy as np

HELP = "LPIPS-VGG16 weights (torchvision VGG16 + lpips lin layers) -> the .npz training and eval read"


def _load_torch(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def _default_lin_path() -> str:
    try:
        import lpips
    except ImportError as err:
        raise SystemExit("--lin not given and the lpips package is not installed: pass the path of "
                         "lpips/weights/v0.1/vgg.pth or tests/fixtures/lpips_vgg_lin_v0.1.npz") from err
    return os.path.join(os.path.dirname(inspect.getfile(lpips.LPIPS)), "weights", "v0.1", "vgg.pth")


def main(argv: list[str]) -> int:
    from geolrm_jax.train import lpips as lpips_module

    parser = argparse.ArgumentParser(prog="geolrm-jax lpips-weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vgg", help="torchvision VGG16 state dict (.pth)")
    source.add_argument("--random-vgg-seed", type=int, help="write a seeded random VGG16 trunk instead")
    parser.add_argument("--lin", help="lpips v0.1 vgg.pth (or .npz of its keys); default: installed lpips")
    parser.add_argument("--out", required=True, help="output .npz")
    args = parser.parse_args(argv)

    lin_path = args.lin or _default_lin_path()
    try:
        lin_sd = _load_torch(lin_path)
        if args.vgg is not None:
            vgg_sd, vgg_source = _load_torch(args.vgg), os.path.basename(args.vgg)
        else:
            vgg_sd = lpips_module.random_vgg16_state_dict(args.random_vgg_seed)
            vgg_source = f"RANDOM numpy seed {args.random_vgg_seed} (not a perceptual metric)"
        variables = lpips_module.lpips_params(vgg_sd, lin_sd)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"geolrm-jax lpips-weights: {err}", file=sys.stderr)
        return 1
    lpips_module.save_lpips_params(args.out, variables, vgg_source=vgg_source, lin_source=os.path.basename(lin_path))
    print(f"wrote {args.out} (VGG16: {vgg_source}; LPIPS lin: {lin_path})")
    return 0
