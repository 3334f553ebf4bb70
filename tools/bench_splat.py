"""GPU benchmark of the splatter: Pallas Triton path vs the pure-JAX (XLA) path.

    PYTHONUNBUFFERED=1 python tools/bench_splat.py [--json OUT.json] [--repeats 5] [--sizes 131072,524288]

Gaussians follow GeoLRM's output distribution: means uniform in the cube [-0.5, 0.5]^3, scales uniform in
[0.001, 0.02] (GeoLRM clamps them at 0.02), random unit quaternions, opacities uniform in (0.05, 0.95), colours
uniform in [0, 1]. Cameras: an orbit at radius 1.5, elevation 20 deg, fov 39.6 deg (GeoLRM's render cameras).
Settings: 8 views at 448^2 and 1 view at 1024^2, for 128k and 512k Gaussians.

Forward = `render` (rgb, alpha, depth); forward+backward = value and gradient of a random linear loss of the
three outputs w.r.t. all five Gaussian fields. Times are medians of `--repeats` runs after a warm-up
(block_until_ready). Memory is XLA's compiled-program footprint (arguments + outputs + temporaries, from
`compiled.memory_analysis()`), i.e. the peak the program needs. The capacity is found once per setting with
the number of tile intersections (next power of two) and then fixed. gsplat is not run (see docs/splatter.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import geolrm_kernels.rasterize as kernels
import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax.geometry import fov_to_intrinsics, orbit_c2w
from geolrm_jax.render.gaussians import Gaussians
from geolrm_jax.render.splat import render


def geolrm_gaussians(num: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(1, num, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    f = lambda x: jnp.asarray(x, jnp.float32)
    return Gaussians(
        means=f(rng.uniform(-0.5, 0.5, (1, num, 3))),
        scales=f(rng.uniform(0.001, 0.02, (1, num, 3))),
        quats=f(quats),
        opacities=f(rng.uniform(0.05, 0.95, (1, num))),
        rgbs=f(rng.uniform(0.0, 1.0, (1, num, 3))),
    )


def cameras(num_views: int):
    c2w = orbit_c2w(num_views, elevation_deg=20.0, radius=1.5)[None]
    K = jnp.broadcast_to(fov_to_intrinsics(39.6), (1, num_views, 3, 3))
    return c2w, K


def _median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _footprint(compiled) -> int:
    mem = compiled.memory_analysis()
    if mem is None:
        return -1
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)


def bench_setting(num: int, num_views: int, size: int, implementations, repeats: int) -> list[dict]:
    g = geolrm_gaussians(num)
    c2w, K = cameras(num_views)
    bg = jnp.ones((3,), jnp.float32)
    capacity = _capacity_for(g, c2w, K, size)
    key = jax.random.PRNGKey(1)
    cots = (jax.random.normal(key, (1, num_views, size, size, 3)),
            jax.random.normal(jax.random.fold_in(key, 1), (1, num_views, size, size)),
            jax.random.normal(jax.random.fold_in(key, 2), (1, num_views, size, size)))
    rows = []
    for name in implementations:
        # "pallas_segment": the Pallas path with the deterministic segment-sum backward instead of atomics.
        impl = "pallas" if name == "pallas_segment" else name
        kernels.ACCUMULATE = "segment" if name == "pallas_segment" else "atomic"

        def forward(g, c2w, K, impl=impl):
            o = render(g, c2w, K, size, size, bg, capacity=capacity, implementation=impl)
            return o.rgb, o.alpha, o.depth, o.overflow

        def loss(g, c2w, K, impl=impl):
            o = render(g, c2w, K, size, size, bg, capacity=capacity, implementation=impl)
            return jnp.sum(o.rgb * cots[0]) + jnp.sum(o.alpha * cots[1]) + jnp.sum(o.depth * cots[2])

        row = {"gaussians": num, "views": num_views, "size": size, "implementation": name,
               "capacity": capacity}
        try:
            args = (g, c2w, K)
            fwd = jax.jit(forward).lower(*args).compile()
            row["forward_bytes"] = _footprint(fwd)
            row["overflow"] = int(fwd(*args)[3])
            row["forward_ms"] = 1e3 * _median_time(fwd, args, repeats)
            row["rgb_mean"] = float(jnp.mean(fwd(*args)[0]))
            fwd_bwd = jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
            row["fwd_bwd_bytes"] = _footprint(fwd_bwd)
            row["fwd_bwd_ms"] = 1e3 * _median_time(fwd_bwd, args, repeats)
            grads = fwd_bwd(*args)[1]
            row["grads_finite"] = bool(all(bool(jnp.all(jnp.isfinite(x))) for x in grads))
        except Exception as err:  # report and go on with the other settings
            row["error"] = f"{type(err).__name__}: {str(err)[:400]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _capacity_for(g, c2w, K, size: int) -> int:
    """Smallest power of two holding every camera's tile intersections."""
    from geolrm_jax.render import projection, tiles

    @jax.jit
    def count(means, scales, quats, c2w, K):
        def one(cw, k):
            cam = projection.camera_from_c2w(cw, k)
            p = projection.project_gaussians(means, scales, quats, cam, size, size)
            return tiles.intersect_tiles(p.means2d, p.radii, p.depths, size, size, 1).num_intersections
        return jax.vmap(one)(c2w, K)

    n = int(jnp.max(count(g.means[0], g.scales[0], g.quats[0], c2w[0], K[0])))
    return int(2 ** int(np.ceil(np.log2(max(n, 1)))))


def print_table(rows: list[dict]) -> None:
    """Markdown table: one line per (setting, implementation), ratios relative to the "pallas" row."""
    base = {(r["gaussians"], r["views"], r["size"]): r for r in rows if r["implementation"] == "pallas"}
    print("\n| Gaussians | views x size | implementation | fwd ms | fwd+bwd ms | fwd+bwd / pallas "
          "| fwd GiB | fwd+bwd GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = base.get((r["gaussians"], r["views"], r["size"]), {})
        ms = lambda k, r=r: f"{r[k]:.1f}" if k in r else "error"
        gib = lambda k, r=r: f"{r[k] / 2**30:.2f}" if r.get(k, -1) > 0 else "-"
        ratio = f"{r['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}" if "fwd_bwd_ms" in r and "fwd_bwd_ms" in b else "-"
        print(f"| {r['gaussians']} | {r['views']} x {r['size']}² | {r['implementation']} | {ms('forward_ms')} | "
              f"{ms('fwd_bwd_ms')} | {ratio} | {gib('forward_bytes')} | {gib('fwd_bwd_bytes')} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="131072,524288", help="comma-separated Gaussian counts")
    parser.add_argument("--settings", default="8x448,1x1024", help="VIEWSxSIZE, comma-separated")
    parser.add_argument("--implementations", default="pallas,pallas_segment,xla")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=1e9, help="start no new setting after this")
    parser.add_argument("--json", default=None, help="write all rows to this file")
    args = parser.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    rows, start = [], time.perf_counter()
    for impl in args.implementations.split(","):
        for num in (int(s) for s in args.sizes.split(",")):
            for setting in args.settings.split(","):
                if time.perf_counter() - start > args.budget_s:
                    print(f"budget of {args.budget_s}s spent: skipping {impl} {num} {setting}")
                    continue
                views, size = (int(v) for v in setting.split("x"))
                rows += bench_setting(num, views, size, [impl], args.repeats)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(rows, f, indent=1)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
