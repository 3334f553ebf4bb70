"""Build the LPIPS parity fixture with the `lpips` PyPI package (PyTorch) on a seeded RANDOM VGG16.

The fixture holds the input images, the reference distances, per-layer distances and one input gradient,
but NOT the VGG weights: the test regenerates them with
``geolrm_jax.train.lpips.random_vgg16_state_dict(seed)``. The lpips package's own linear layers
(``lpips/weights/v0.1/vgg.pth``, 1472 floats) are written next to it as an ``.npz`` of the state dict.

Environment (the main environment's torch cannot take torchvision; CI never runs this script)::

    python -m venv /tmp/lpipsenv
    /tmp/lpipsenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lpips numpy
    # let the venv also see jax/flax (appended after its own site-packages, so its torch wins):
    python -c "import site; print(site.getsitepackages()[0])" > /tmp/lpipsenv/lib/python3.11/site-packages/main.pth
    PYTHONPATH=. /tmp/lpipsenv/bin/python tools/make_lpips_fixture.py --out-dir tests/fixtures
"""
from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import os
import pathlib
import sys

import numpy as np

VGG_SEED = 1234
IMAGE_SEED = 7


def _images(rng, n, h, w, perturb):
    """Pairs of smooth-plus-noise images in [-1, 1], the second a perturbed copy of the first (float16-exact)."""
    base = rng.uniform(-1, 1, (n, h // 4 + 1, w // 4 + 1, 3))
    base = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)[:, :h, :w]
    x0 = np.clip(0.7 * base + 0.3 * rng.uniform(-1, 1, (n, h, w, 3)), -1, 1)
    scales = np.asarray(perturb, np.float64)[:, None, None, None]
    x1 = np.clip(x0 + scales * rng.standard_normal((n, h, w, 3)), -1, 1)
    return x0.astype(np.float16), x1.astype(np.float16)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="tests/fixtures")
    args = parser.parse_args(argv)

    import lpips
    import torch

    from geolrm_jax.train.lpips import random_vgg16_state_dict

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    sd = random_vgg16_state_dict(VGG_SEED)
    loaded = 0
    for slice_no in range(1, 6):
        for name, module in getattr(model.net, f"slice{slice_no}").named_children():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.data.copy_(torch.from_numpy(sd[f"features.{name}.weight"]))
                module.bias.data.copy_(torch.from_numpy(sd[f"features.{name}.bias"]))
                loaded += 1
    if loaded != 13:
        raise RuntimeError(f"expected 13 VGG16 convs in lpips.LPIPS(net='vgg').net, found {loaded}")

    def run(x0, x1):
        t0 = torch.from_numpy(x0.astype(np.float32)).permute(0, 3, 1, 2)
        t1 = torch.from_numpy(x1.astype(np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            dist, layers = model(t0, t1, retPerLayer=True)
        per_layer = torch.stack([r.reshape(-1) for r in layers], dim=-1)
        return dist.reshape(-1).numpy(), per_layer.numpy()

    rng = np.random.default_rng(IMAGE_SEED)
    out = {"vgg_seed": np.int64(VGG_SEED)}
    # Group a: three pairs at 64x48 (non-square, catches H/W mix-ups), from near-identical to unrelated.
    a0, a1 = _images(rng, 3, 64, 48, perturb=[0.02, 0.2, 1.0])
    # Group b: one pair at 50x70: sizes not divisible by 16 exercise the floor of the max-pools.
    b0, b1 = _images(rng, 1, 50, 70, perturb=[0.3])
    for name, (x0, x1) in {"a": (a0, a1), "b": (b0, b1)}.items():
        dist, per_layer = run(x0, x1)
        out.update({f"{name}_x0": x0, f"{name}_x1": x1, f"{name}_dist": dist, f"{name}_per_layer": per_layer})

    # Group g: gradient of the distance w.r.t. the first image, one 32x32 pair.
    g0, g1 = _images(rng, 1, 32, 32, perturb=[0.3])
    t0 = torch.from_numpy(g0.astype(np.float32)).permute(0, 3, 1, 2).requires_grad_(True)
    t1 = torch.from_numpy(g1.astype(np.float32)).permute(0, 3, 1, 2)
    dist = model(t0, t1).sum()
    dist.backward()
    out.update({"g_x0": g0, "g_x1": g1, "g_dist": np.float32(dist.item()),
                "g_grad_x0": t0.grad.permute(0, 2, 3, 1).numpy().astype(np.float32)})

    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fixture = out_dir / "lpips_parity.npz"
    np.savez_compressed(fixture, **out)

    lin_path = os.path.join(os.path.dirname(inspect.getfile(lpips.LPIPS)), "weights", "v0.1", "vgg.pth")
    lin_sd = torch.load(lin_path, map_location="cpu", weights_only=True)
    lin_out = out_dir / "lpips_vgg_lin_v0.1.npz"
    np.savez(lin_out, **{k: v.numpy().astype(np.float32) for k, v in lin_sd.items()})
    print(f"wrote {fixture} ({fixture.stat().st_size} bytes), {lin_out} ({lin_out.stat().st_size} bytes); "
          f"lpips {importlib.metadata.version('lpips')}, torch {torch.__version__}; "
          f"distances a={out['a_dist']}, b={out['b_dist']}, g={out['g_dist']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
