"""gsplat baseline for tools/bench/splat.py: load gsplat, convert our cameras, time it, compare its images with ours.

Camera conversion (ours -> gsplat): our c2w is OpenGL/Blender camera-to-world and our K is normalized with only
K[1, 1] read (GeoLRM's convention, see geolrm_jax/render/projection.py). gsplat wants OpenCV world-to-camera
`viewmats` and pixel-unit `Ks`:
  viewmat = inverse(c2w @ diag(1, -1, -1, 1))        (the w2c our projection computes)
  fx = W K[1, 1], fy = H K[1, 1]                     (our focal_x = W / (2 tan), tan = 1 / (2 K[1, 1]))
  cx = W / 2, cy = H / 2                              (ours evaluates pixel x at x with the mean at
                                                       fx t_x / t_z + (W - 1) / 2; gsplat evaluates it at x + 0.5
                                                       with the mean at fx t_x / t_z + cx: equal offsets)
Then gsplat's EWA clamp (1.3 tan on both sides when cx = W / 2), the 0.3 dilation (eps2d) and the near plane
(0.2) match ours. Known differences, which change a few edge pixels: gsplat clamps alpha at 0.999 (ours 0.99;
the benchmark's opacities are <= 0.95, so never reached), stops at T <= 1e-4 (ours T < 1e-4), culls z < near (ours
z <= near), and bounds each Gaussian by an opacity-aware, per-axis radius (min(3.33, sqrt(2 ln(255 o))) sigma)
instead of 3DGS's 3 sqrt(lambda_max) circle, so it keeps some faint tails (alpha >= 1/255 beyond 3 sigma) that
ours (as the original) cuts at the tile rectangle. It does not clamp rgb to [0, 1] (with a white background
C + T <= 1 anyway). Depth is render_mode "RGB+D": sum of alpha T z, unnormalized, as ours.
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np


def load(so_dir: str | None):
    """(gsplat module, None) or (None, reason). so_dir: folder with a prebuilt gsplat_cuda.so to use as
    gsplat's extension (registered as `gsplat.csrc`, which gsplat's _backend imports first); without it gsplat
    JIT-compiles its CUDA code on first use."""
    try:
        import torch
    except ImportError as err:
        return None, f"torch is not installed ({err})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    try:
        if so_dir:
            from torch.utils.cpp_extension import _import_module_from_library

            sys.modules["gsplat.csrc"] = _import_module_from_library("gsplat_cuda", so_dir, True)
        import gsplat
        from gsplat.cuda._backend import _C
    except Exception as err:  # ImportError, a failed build, a .so built against another torch
        return None, f"gsplat could not be loaded: {type(err).__name__}: {str(err)[:300]}"
    if _C is None:
        return None, "gsplat's CUDA extension is missing (no CUDA toolkit to compile it)"
    return gsplat, None


def cameras(c2w, K, height: int, width: int):
    """Our (C, 4, 4) OpenGL c2w and (C, 3, 3) normalized K -> gsplat's viewmats and pixel Ks (float64 numpy)."""
    c2w = np.asarray(c2w, np.float64)
    viewmats = np.linalg.inv(c2w * np.array([1.0, -1.0, -1.0, 1.0]))
    f = np.asarray(K, np.float64)[:, 1, 1]
    Ks = np.zeros((len(f), 3, 3))
    Ks[:, 0, 0], Ks[:, 1, 1] = width * f, height * f
    Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = width / 2.0, height / 2.0, 1.0
    return viewmats, Ks


def _median_ms(torch, fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench(gsplat, g, c2w, K, size: int, cots, repeats: int, packed: bool = True) -> tuple[dict, dict]:
    """Time gsplat's forward and forward+backward on scene 0 of `g` (our `Gaussians`, batch 1) into all cameras.

    Returns (row, arrays): row like splat.py's (ms, bytes), arrays = images and gradients (numpy)."""
    import torch

    dev = torch.device("cuda")
    t = lambda x: torch.as_tensor(np.array(x), dtype=torch.float32, device=dev)
    viewmats, Ks = (t(x) for x in cameras(c2w[0], K[0], size, size))
    fields = [t(x[0]) for x in (g.means, g.quats, g.scales, g.opacities, g.rgbs)]
    num_views = viewmats.shape[0]
    bg = torch.ones((num_views, 3), device=dev)
    row, arrays = {}, {}

    def render(means, quats, scales, opacities, rgbs):
        # gsplat 1.5.3's packed mode asserts backgrounds of shape (channels,) against (C, channels): there the
        # background is added here instead (C + (1 - alpha) bg, the same value).
        colors, alphas, _ = gsplat.rasterization(
            means, quats, scales, opacities, rgbs, viewmats, Ks, size, size, near_plane=0.2, eps2d=0.3,
            radius_clip=0.0, packed=packed, backgrounds=None if packed else bg, render_mode="RGB+D",
            rasterize_mode="classic")
        rgb = colors[..., :3] + (1.0 - alphas) * bg[:, None, None, :] if packed else colors[..., :3]
        return rgb, alphas[..., 0], colors[..., 3]

    try:
        with torch.no_grad():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            out = render(*fields)
            torch.cuda.synchronize()
            row["forward_bytes"] = int(torch.cuda.max_memory_allocated())
            arrays.update(rgb=out[0].cpu().numpy(), alpha=out[1].cpu().numpy(), depth=out[2].cpu().numpy())
            del out
            row["forward_ms"] = _median_ms(torch, lambda: render(*fields), repeats)
        cot = [t(c[0]) for c in cots]
        params = [f.clone().requires_grad_(True) for f in fields]

        def fwd_bwd():
            for p in params:
                p.grad = None
            rgb, alpha, depth = render(*params)
            loss = (rgb * cot[0]).sum() + (alpha * cot[1]).sum() + (depth * cot[2]).sum()
            loss.backward()
            return loss

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        row["fwd_bwd_bytes"] = int(torch.cuda.max_memory_allocated())
        row["fwd_bwd_ms"] = _median_ms(torch, fwd_bwd, repeats)
        names = ("means", "quats", "scales", "opacities", "rgbs")
        arrays.update({f"grad_{n}": p.grad.cpu().numpy() for n, p in zip(names, params, strict=True)})
        row["grads_finite"] = bool(all(np.all(np.isfinite(v)) for k, v in arrays.items() if k.startswith("grad")))
    except Exception as err:  # report and go on
        row["error"] = f"{type(err).__name__}: {str(err)[:400]}"
    finally:
        torch.cuda.empty_cache()
    return row, arrays


def compare(ours: dict, theirs: dict, quats=None) -> dict:
    """name -> (||ours - theirs|| / ||theirs||, max |ours - theirs|) for the images and gradients both have.

    gsplat normalizes the quaternions inside (ours, as the original, does not), so for unit quaternions its
    gradient is ours projected on the tangent space, g - (g . q) q: with `quats` (N, 4) ours is projected first.
    """
    ours = dict(ours)
    if quats is not None and "grad_quats" in ours:
        q = np.asarray(quats, np.float64)
        g = np.asarray(ours["grad_quats"], np.float64)
        ours["grad_quats"] = g - np.sum(g * q, -1, keepdims=True) * q
    out = {}
    for name in ("rgb", "alpha", "depth", "grad_means", "grad_scales", "grad_quats", "grad_opacities",
                 "grad_rgbs"):
        if name in ours and name in theirs:
            a, b = np.asarray(ours[name], np.float64), np.asarray(theirs[name], np.float64)
            if a.shape != b.shape:
                out[name] = (float("nan"), float("nan"))
                continue
            out[name] = (float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)), float(np.max(np.abs(a - b))))
    return out
