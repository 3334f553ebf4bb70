"""TPU benchmark of the Pallas Mosaic kernels (geolrm_kernels.tpu) against the XLA paths. NOT YET RUN ON A TPU:
no number of this script has been measured; it is ready for the first TPU a user has (see docs/tpu.md).

    python tools/bench/tpu.py [--rows 6:448px:8192,21:560px:16384] [--splat 131072@8x448,524288@8x448]
        [--reps 5] [--out DIR] [--block-q 128] [--chunk 512] [--raster-chunk 128]
    python tools/bench/tpu.py --tiny     # CPU smoke test of this script (kernels in the Pallas interpreter)

Rows are those of the GPU benchmarks: deformable sampling as tools/bench/deformable.py (B = 1, V views, levels
112^2 + 64^2 (448px) or 140^2 + 80^2 (560px), 16 heads x 48 channels, S anchors, 2 levels x 8 points, fp32,
``--points sv3d``-style model-like reference points by default: the kernels' cost depends on how compact a
query block's samples are), and the splatter as tools/bench/splat.py (GeoLRM-distributed Gaussians, orbit
cameras, N Gaussians into V views of SIZE^2, capacity the next power of two of the intersections).

Columns: fwd and fwd+bwd median wall time over ``--reps`` runs after a warm-up (ms), for "pallas_tpu" and "xla",
their ratio, and the largest relative difference of the outputs and gradients between the two (a correctness
check on the benchmark's own inputs). Results go to ``$OUT/bench_tpu.json`` (written beside, then renamed), with
the device (``harness.device_info``).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

import deformable as bd
import harness
import jax
import jax.numpy as jnp
import numpy as np
import splat as bs
from geolrm_kernels.deformable import DeformableConfig, deformable_sample, kernel_query_order
from geolrm_kernels.rasterize import RasterizeConfig
from geolrm_kernels.tpu.config import DeformableTpuConfig, RasterizeTpuConfig

from geolrm_jax.render.splat import render

DEFORMABLE_ROWS = "6:448px:8192,21:560px:16384"
SPLAT_ROWS = "131072@8x448,524288@8x448,131072@1x1024"
TINY_LEVELS = ((9, 11), (5, 6))


def median_ms(fn, args, reps: int) -> float:
    return harness.median_ms(lambda: fn(*args), reps)


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def deformable_row(views: int, levels: str, anchors: int, impls, reps: int, points: str, tiny: bool,
                   config: DeformableConfig) -> dict:
    shapes = TINY_LEVELS if tiny else bd.LEVEL_SETS[levels]
    value, ref, offsets, weights, cot = bd.jax_inputs(jax, jnp, views, shapes, anchors, points=points)
    if tiny:  # a CPU-sized head count
        value, offsets, weights, cot = value[..., :2, :8], offsets[:, :, :2], weights[:, :, :2], cot[..., :2, :8]
    row = {"op": "deformable", "views": views, "levels": levels, "anchors": anchors, "points": points}
    results = {}
    for impl in impls:
        order = kernel_query_order(ref, implementation=impl, config=config)
        op = lambda *x, impl=impl, order=order: deformable_sample(*x, shapes, implementation=impl, query_order=order,
                                                                  config=config)
        fwd = jax.jit(op)

        def fwd_bwd(*a, op=op):
            out, vjp = jax.vjp(op, *a)
            return (out, *vjp(cot))

        fwd_bwd = jax.jit(fwd_bwd)
        args = (value, ref, offsets, weights)
        row[f"{impl}_fwd_ms"] = median_ms(fwd, args, reps)
        row[f"{impl}_fwd_bwd_ms"] = median_ms(fwd_bwd, args, reps)
        results[impl] = fwd_bwd(*args)
    if len(impls) == 2:
        row["max_rel_diff"] = max(rel_diff(a, b) for a, b in zip(*results.values(), strict=True))
    return row


def splat_row(num: int, views: int, size: int, impls, reps: int, config: RasterizeConfig) -> dict:
    g = bs.geolrm_gaussians(num)
    c2w, K = bs.cameras(views)
    capacity, intersections = bs._capacity_for(g, c2w, K, size)
    cot = jax.random.normal(jax.random.key(1), (1, views, size, size, 5))
    bg = jnp.ones(3)
    row = {"op": "splat", "gaussians": num, "views": views, "size": size, "capacity": capacity,
           "intersections": intersections}
    results = {}
    for impl in impls:
        def images(g, c2w, impl=impl):
            o = render(g, c2w, K, size, size, bg, capacity=capacity, implementation=impl, raster_config=config)
            return jnp.concatenate([o.rgb, o.alpha[..., None], o.depth[..., None]], -1)

        fwd = jax.jit(images)
        fwd_bwd = jax.jit(jax.value_and_grad(lambda g, c2w, images=images: jnp.sum(images(g, c2w) * cot),
                                             argnums=(0, 1)))
        row[f"{impl}_fwd_ms"] = median_ms(fwd, (g, c2w), reps)
        row[f"{impl}_fwd_bwd_ms"] = median_ms(fwd_bwd, (g, c2w), reps)
        results[impl] = (fwd(g, c2w), *jax.tree.leaves(fwd_bwd(g, c2w)[1]))
    if len(impls) == 2:
        row["max_rel_diff"] = max(rel_diff(a, b) for a, b in zip(*results.values(), strict=True))
    return row


def print_table(rows, impls) -> None:
    kernel, xla = impls
    print(f"{'row':32s} {kernel + ' fwd':>16s} {'xla fwd':>9s} {kernel + ' f+b':>16s} {'xla f+b':>9s} "
          f"{'f+b xla/tpu':>11s} {'max rel diff':>12s}")
    for r in rows:
        name = (f"deformable V={r['views']} {r['levels']} S={r['anchors']}" if r["op"] == "deformable" else
                f"splat N={r['gaussians']} {r['views']}x{r['size']}")
        ratio = r[f"{xla}_fwd_bwd_ms"] / r[f"{kernel}_fwd_bwd_ms"]
        print(f"{name:32s} {r[f'{kernel}_fwd_ms']:16.2f} {r[f'{xla}_fwd_ms']:9.2f} {r[f'{kernel}_fwd_bwd_ms']:16.2f} "
              f"{r[f'{xla}_fwd_bwd_ms']:9.2f} {ratio:11.2f} {r.get('max_rel_diff', float('nan')):12.2e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=DEFORMABLE_ROWS, help="deformable rows V:LEVELS:S ('' for none)")
    parser.add_argument("--splat", default=SPLAT_ROWS, help="splat rows N@VIEWSxSIZE ('' for none)")
    parser.add_argument("--points", default="sv3d", choices=bd.POINT_MODES)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--block-q", type=int, default=DeformableTpuConfig.block_q)
    parser.add_argument("--chunk", type=int, default=DeformableTpuConfig.chunk)
    parser.add_argument("--raster-chunk", type=int, default=RasterizeTpuConfig.chunk)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test (Pallas interpreter, tiny rows)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if not out.is_dir():
        print(f"bench/tpu.py: --out {out} is not a directory", file=sys.stderr)
        return 2
    try:
        deformable_config = DeformableConfig(tpu=DeformableTpuConfig(args.block_q, args.chunk))
        raster_config = RasterizeConfig(tpu=RasterizeTpuConfig(args.raster_chunk))
    except ValueError as e:
        print(f"bench/tpu.py: {e}", file=sys.stderr)
        return 2
    if args.tiny:
        impls, deformable_rows, splat_rows, reps = ("pallas_tpu_interpret", "xla"), [(2, "tiny", 40)], [
            (200, 1, 32)], 1
    else:
        if jax.default_backend() != "tpu":
            print(f"bench/tpu.py: needs a TPU backend (found {jax.default_backend()}); --tiny runs on CPU",
                  file=sys.stderr)
            return 2
        impls, reps = ("pallas_tpu", "xla"), args.reps
        deformable_rows = [(int(v), lv, int(s)) for v, lv, s in
                           (r.split(":") for r in args.rows.split(",") if r)]
        splat_rows = [(int(n), int(vs.split("x")[0]), int(vs.split("x")[1])) for n, vs in
                      (r.split("@") for r in args.splat.split(",") if r)]
    rows = [deformable_row(v, lv, s, impls, reps, args.points, args.tiny, deformable_config)
            for v, lv, s in deformable_rows]
    rows += [splat_row(n, v, size, impls, reps, raster_config) for n, v, size in splat_rows]
    print_table(rows, impls)
    harness.write_json(out / "bench_tpu.json", {**harness.device_info(),
                                                "config": {"block_q": args.block_q, "chunk": args.chunk,
                                                           "raster_chunk": args.raster_chunk}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
