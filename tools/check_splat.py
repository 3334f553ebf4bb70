"""Check the splatter against a directory of splat_small-format fixtures (case_*.npz, float64 references).

    python tools/check_splat.py --fixture ../shared/fixtures/splat_small [--implementation xla|pallas|...]

Computes in float32, prints the error of every output and gradient, and exits non-zero past the fixture
README's tolerances: radii / visible / n_blended / stopped_early exactly equal; rgb, alpha, depth
max|diff| <= 1e-4; every gradient array max|diff| <= 1e-4 * max|g_ref| (exact set `grad_*` with
gradient="exact", CUDA set `grad_cudaconv_*` with gradient="cuda").
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax.render.splat import render_camera

OUTPUT_TOL = 1e-4
GRAD_TOL = 1e-4
INPUTS = ("means", "scales", "quats", "opacities", "rgbs")
REQUIRED = INPUTS + ("c2w", "K", "height", "width", "bg", "rgb", "alpha", "depth", "cot_rgb", "cot_alpha",
                     "cot_depth", "radii", "visible", "n_blended", "stopped_early")


def load_case(path: pathlib.Path) -> dict:
    data = dict(np.load(path))
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}")
    return data


def _evaluate(case, gradient, implementation, capacity):
    """One jitted program: the full render of the case and the VJP of (rgb, alpha, depth) with its cotangents."""
    height, width = int(case["height"]), int(case["width"])
    f32 = lambda k: jnp.asarray(case[k], jnp.float32)

    def run(means, scales, quats, opacities, rgbs, c2w):
        return render_camera(means, scales, quats, opacities, rgbs, c2w, f32("K"), f32("bg"), height, width,
                             capacity, gradient=gradient, implementation=implementation)

    @jax.jit
    def evaluate(args, cots):
        full, vjp = jax.vjp(run, *args)
        cot = jax.tree.map(jnp.zeros_like, full)
        cot = cot._replace(rgb=cots[0], alpha=cots[1], depth=cots[2])
        return full, vjp(cot)

    args = tuple(f32(k) for k in INPUTS) + (f32("c2w"),)
    return evaluate(args, tuple(f32(k) for k in ("cot_rgb", "cot_alpha", "cot_depth")))


def check_case(path: pathlib.Path, implementation: str | None, capacity: int, verbose: bool = True,
               modes=("exact", "cuda")):
    """Returns a list of (name, error, tolerance, passed) for one case file; modes: gradient conventions."""
    case = load_case(path)
    rows = []

    def report(name, err, tol):
        ok = bool(np.isfinite(err) and err <= tol)
        rows.append((name, float(err), tol, ok))

    for gradient in modes:
        full, grads = _evaluate(case, gradient, implementation, capacity)
        out = (full.rgb, full.alpha, full.depth)
        if gradient == "exact":
            report("overflow", float(full.overflow), 0)
            for name, got in zip(("rgb", "alpha", "depth"), out, strict=True):
                report(name, np.abs(np.asarray(got, np.float64) - case[name]).max(), OUTPUT_TOL)
            proj = full.projected
            for name, got in (("radii", proj.radii), ("visible", proj.radii > 0),
                              ("n_blended", full.n_blended), ("stopped_early", full.stopped_early)):
                report(f"{name} mismatches", float(np.sum(np.asarray(got) != case[name])), 0)
            names, prefix = INPUTS + ("c2w",), "grad_"
        else:
            names, prefix = INPUTS, "grad_cudaconv_"
        for name, got in zip(names, grads, strict=False):
            ref = case[prefix + name]
            err = np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30)
            report(f"{prefix}{name} (rel. to max)", err, GRAD_TOL)
    if verbose:
        print(f"== {path.name} (implementation={implementation or 'auto'})")
        for name, err, tol, ok in rows:
            print(f"  {name:34s} {err:10.3e}  tol {tol:8.1e}  {'ok' if ok else 'FAIL'}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", required=True, type=pathlib.Path, help="directory with case_*.npz")
    parser.add_argument("--implementation", default=None, choices=[None, "xla", "pallas", "pallas_interpret"])
    parser.add_argument("--capacity", type=int, default=1 << 16)
    args = parser.parse_args(argv)
    cases = sorted(args.fixture.glob("case_*.npz"))
    if not cases:
        print(f"no case_*.npz in {args.fixture}", file=sys.stderr)
        return 2
    failed = []
    for path in cases:
        rows = check_case(path, args.implementation, args.capacity)
        failed += [f"{path.name}: {name}" for name, _, _, ok in rows if not ok]
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed))
        return 1
    print(f"all {len(cases)} cases within tolerance")
    return 0


if __name__ == "__main__":
    functools.partial(sys.exit, main())()
