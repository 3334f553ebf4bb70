"""GPU benchmark of the splatter: Pallas Triton path, pure-JAX (XLA) path and gsplat, side by side.

    PYTHONUNBUFFERED=1 python tools/bench/splat.py [--json OUT.json] [--repeats 5] [--sizes 524288,131072]
        [--implementations pallas,gsplat,gsplat_unpacked,xla] [--gsplat-so DIR] [--stages [radix,two_key]]
        [--sweep pallas@16/8/8,pallas+tight,...] [--profile]
    (on the GPU machine: bash tools/gpu_bench_splat.sh ARGS, which also installs gsplat and checks splat_small)

Gaussians follow GeoLRM's output distribution: means uniform in the cube [-0.5, 0.5]^3, scales uniform in
[0.001, 0.02] (GeoLRM clamps them at 0.02), random unit quaternions, opacities uniform in (0.05, 0.95), colours
uniform in [0, 1]. Cameras: an orbit at radius 1.5, elevation 20 deg, fov 39.6 deg (GeoLRM's render cameras).
Settings: 8 views at 448^2 and 1 view at 1024^2, for 128k and 512k Gaussians.

Forward = `render` (rgb, alpha, depth); forward+backward = value and gradient of a random linear loss of the
three outputs w.r.t. all five Gaussian fields. Times are medians of `--repeats` runs after a warm-up
(block_until_ready). Memory is XLA's compiled-program footprint (arguments + outputs + temporaries, from
`compiled.memory_analysis()`), i.e. the peak the program needs. The capacity is found once per setting with
the number of tile intersections (next power of two; rows with "+tight": rounded up to a multiple of 2^16)
and then fixed.

gsplat (optional; torch, gsplat and a CUDA device, else skipped with the reason printed): the same Gaussians and
cameras through `gsplat.rasterization(render_mode="RGB+D")` (see `gsplat_baseline.py` for the camera conversion,
what matches and what differs). Its times are medians of synchronized wall-clock runs like ours; its memory is
`torch.cuda.max_memory_allocated` over the call (inputs, cotangents, outputs and temporaries resident), the
allocator's peak, against our compiled footprint. The table also prints the difference between its images and
ours, and the ratios ours / gsplat.

--stages times, at the first setting, the two Pallas kernels alone (with the number of chunks the backward
walks) and the forward's parts cumulatively (projection; + depth rank and slot keys; + key sort; + tile ranges =
intersection; the whole forward) for the given intersection methods ("radix": one uint32 key sort; "two_key": the
(tile, depth) comparison sort; "kernels": none), the intersection mapped over the cameras as in `render`.
--sweep adds Pallas rows at the first setting with other chunk / warp counts (a `RasterizeConfig`, see
`_configure`).
--profile only runs the two kernels, for Nsight Compute (NCU=1 in gpu_bench_splat.sh).
"""
from __future__ import annotations

import argparse
import json
import time

import gsplat_baseline
import harness
import jax
import jax.numpy as jnp
import numpy as np
from geolrm_kernels import atomics, rasterize
from geolrm_kernels.rasterize import RasterizeConfig
from geolrm_kernels.rasterize.backward_triton import backward_pallas
from geolrm_kernels.rasterize.forward_triton import forward_pallas

from geolrm_jax.geometry import fov_to_intrinsics, orbit_c2w
from geolrm_jax.render import projection, tiles
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


def _footprint(compiled) -> int:
    mem = compiled.memory_analysis()
    if mem is None:
        return -1
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)


def _cotangents(num_views: int, size: int):
    key = jax.random.PRNGKey(1)
    return (jax.random.normal(key, (1, num_views, size, size, 3)),
            jax.random.normal(jax.random.fold_in(key, 1), (1, num_views, size, size)),
            jax.random.normal(jax.random.fold_in(key, 2), (1, num_views, size, size)))


BACKWARD_CHUNK = rasterize.DEFAULT_CONFIG.backward_chunk


def _configure(name: str) -> tuple[str, RasterizeConfig]:
    """Implementation name -> (render's `implementation`, the kernels' `RasterizeConfig`), setting the
    intersection module's switches.

    "pallas@C/F/B[/BC]" is the Pallas path with forward chunk C, F forward warps, B backward warps and backward
    chunk BC (defaults: `RasterizeConfig()`'s); "+xlakeys" writes the intersection keys with jnp ops instead of
    the Pallas key kernel, "+tight" (bench_setting) sizes the capacity from the need rounded up to 2^16 instead
    of a power of two."""
    name, *options = name.split("+")
    name, _, tune = name.partition("@")
    fields = ("chunk", "num_warps", "backward_num_warps", "backward_chunk")
    config = RasterizeConfig(**dict(zip(fields, (int(x) for x in tune.split("/")) if tune else (), strict=False)))
    unknown = set(options) - {"tight", "xlakeys"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)} in {name!r}")
    tiles.METHOD = "two_key" if name.endswith("two_key") else "auto"
    tiles.KEYS = "xla" if "xlakeys" in options else None
    return {"pallas_two_key": "pallas", "xla_two_key": "xla"}.get(name, name), config


def bench_ours(name: str, g, c2w, K, size: int, capacity: int, cots, repeats: int) -> tuple[dict, dict]:
    """One row for our renderer; also returns the arrays (images, gradients) for the gsplat comparison."""
    impl, config = _configure(name)
    bg = jnp.ones((3,), jnp.float32)

    def forward(g, c2w, K):
        o = render(g, c2w, K, size, size, bg, capacity=capacity, implementation=impl, raster_config=config)
        return o.rgb, o.alpha, o.depth, o.overflow

    def loss(g, c2w, K, cots):
        o = render(g, c2w, K, size, size, bg, capacity=capacity, implementation=impl, raster_config=config)
        return jnp.sum(o.rgb * cots[0]) + jnp.sum(o.alpha * cots[1]) + jnp.sum(o.depth * cots[2])

    row, arrays = {}, {}
    try:
        args = (g, c2w, K)
        fwd = jax.jit(forward).lower(*args).compile()
        row["forward_bytes"] = _footprint(fwd)
        out = fwd(*args)
        row["overflow"] = int(out[3])
        arrays.update(rgb=np.asarray(out[0][0]), alpha=np.asarray(out[1][0]), depth=np.asarray(out[2][0]))
        del out
        row["forward_ms"] = harness.median_ms(lambda: fwd(*args), repeats)
        args = (g, c2w, K, cots)
        fwd_bwd = jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
        row["fwd_bwd_bytes"] = _footprint(fwd_bwd)
        row["fwd_bwd_ms"] = harness.median_ms(lambda: fwd_bwd(*args), repeats)
        grads = fwd_bwd(*args)[1]
        row["grads_finite"] = bool(all(bool(jnp.all(jnp.isfinite(x))) for x in grads))
        arrays.update({f"grad_{k}": np.asarray(v[0]) for k, v in grads._asdict().items()})
    except Exception as err:  # report and go on with the other settings
        row["error"] = f"{type(err).__name__}: {str(err)[:400]}"
    return row, arrays


def bench_stages(g, c2w, K, size: int, capacity: int, repeats: int,
                 methods=("radix", "two_key"), profile: bool = False) -> list[dict]:
    """Forward split, cumulative: projection, + depth rank and keys, + sort, + tile ranges (= intersection), forward.

    The intersection steps run per camera under lax.map, as in `render`; the rasterization kernel is the whole
    forward minus the intersection. For "two_key" only projection / intersection / forward are timed.
    profile: only run each Pallas kernel twice, untimed (for a profiler such as ncu), and return no rows.
    """
    bg = jnp.ones((3,), jnp.float32)
    grid_x, grid_y = projection.tiles_grid(size, size)
    num_tiles = grid_x * grid_y
    rank_bits, _ = tiles.radix_bits(g.means.shape[1], num_tiles)

    def project(g, c2w, K):
        def one(cw, k):
            return projection.project_gaussians(g.means[0], g.scales[0], g.quats[0],
                                                projection.camera_from_c2w(cw, k), size, size)
        return jax.vmap(one)(c2w[0], K[0])

    def per_camera(step):
        def fn(g, c2w, K):
            p = project(g, c2w, K)
            return p, jax.lax.map(lambda q: step(*q), (p.means2d, p.radii, p.depths))
        return fn

    def keys(m, r, d):  # depth rank and the slot keys
        return tiles.radix_keys(m, r, tiles.depth_rank(d, r)[1], size, size, capacity, rank_bits)

    def keys_sort(m, r, d):
        order, rank = tiles.depth_rank(d, r)
        key, _ = tiles.radix_keys(m, r, rank, size, size, capacity, rank_bits)
        return tiles.radix_sorted(key, order, rank_bits, num_tiles)

    def intersect(m, r, d):
        return tiles.intersect_tiles(m, r, d, size, size, capacity)

    def forward(g, c2w, K):
        o = render(g, c2w, K, size, size, bg, capacity=capacity, implementation="pallas")
        return o.rgb, o.alpha, o.depth

    def raster_inputs(g, c2w, K):
        p, lists = per_camera(intersect)(g, c2w, K)
        pack = jax.vmap(rasterize.pack_features, in_axes=(0, 0, None, None, 0))
        return pack(p.means2d, p.conics, g.opacities[0], g.rgbs[0], p.depths), lists

    def kernel_forward(feats, lists):
        return jax.vmap(lambda f, i, s, e: forward_pallas(f, i, s, e, size, size))(
            feats, lists.gaussian_ids, lists.tile_start, lists.tile_end)

    def kernel_backward(feats, lists, out, cot):
        return jax.vmap(lambda f, i, s, e, o, c: backward_pallas(f, i, s, e, o, c, size, size, False))(
            feats, lists.gaussian_ids, lists.tile_start, lists.tile_end, out, cot)

    rows = []
    _configure("pallas")  # the intersection switches' defaults
    try:  # the two Pallas kernels alone, on the lists of the radix method
        feats, lists = jax.jit(raster_inputs)(g, c2w, K)
        out = jax.jit(kernel_forward)(feats, lists)
        noise = lambda x, i: jax.random.normal(jax.random.PRNGKey(10 + i), x.shape, x.dtype)
        cot = out._replace(color=noise(out.color, 0), weight=noise(out.weight, 1), depth=noise(out.depth, 2),
                           transmittance=noise(out.transmittance, 3))
        if profile:
            for _ in range(2):
                jax.block_until_ready(jax.jit(kernel_forward)(feats, lists))
                jax.block_until_ready(jax.jit(kernel_backward)(feats, lists, out, cot))
            return []
        walked = jnp.maximum(jnp.max(out.last, axis=-1) - lists.tile_start, 0)
        rows.append({"method": "kernels", "intersections": int(jnp.sum(lists.num_intersections)),
                     "backward_chunks": int(jnp.sum(-(-walked // BACKWARD_CHUNK))),
                     "kernel_forward_ms": harness.median_ms(
                         lambda f=jax.jit(kernel_forward), a=(feats, lists): f(*a), repeats),
                     "kernel_backward_ms": harness.median_ms(
                         lambda f=jax.jit(kernel_backward), a=(feats, lists, out, cot): f(*a), repeats)})
        del feats, lists, out, cot
    except Exception as err:
        rows.append({"method": "kernels", "error": f"{type(err).__name__}: {str(err)[:300]}"})
    for method in methods:
        _configure("pallas_two_key" if method == "two_key" else "pallas")
        stages: list = [("projection", project)]
        if method == "radix":
            stages += [("+keys", per_camera(keys)), ("+sort", per_camera(keys_sort))]
        stages += [("intersection", per_camera(intersect)), ("forward", forward)]
        row = {"method": method}
        for stage, fn in stages:
            try:  # a fresh function per method: jit must retrace (tiles.METHOD is read at trace time)
                fresh = lambda *a, fn=fn: fn(*a)
                row[stage + "_ms"] = harness.median_ms(lambda f=jax.jit(fresh): f(g, c2w, K), repeats)
            except Exception as err:
                row[stage + "_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        rows.append(row)
    _configure("pallas")  # restore the intersection switches
    return rows


def bench_setting(num: int, num_views: int, size: int, implementations, repeats: int, gsplat,
                  stages: tuple[str, ...] = ()) -> list[dict]:
    g = geolrm_gaussians(num)
    c2w, K = cameras(num_views)
    capacity, needed = _capacity_for(g, c2w, K, size)
    cots = _cotangents(num_views, size)
    setting = {"gaussians": num, "views": num_views, "size": size, "capacity": capacity, "needed": needed}
    rows, ours = [], None
    for name in implementations:
        if name.startswith("gsplat"):
            if gsplat is None:
                continue
            row, arrays = gsplat_baseline.bench(gsplat, g, c2w, K, size, cots, repeats,
                                             packed=name != "gsplat_unpacked")
            if ours is not None and arrays:
                row["vs_ours"] = gsplat_baseline.compare(ours, arrays, quats=g.quats[0])
        else:
            # "+tight": the capacity rounded up from the need to a multiple of 2^16 instead of a power of two.
            tight = "tight" in name.split("+")
            cap = -(-needed // TIGHT_STEP) * TIGHT_STEP if tight else capacity
            row, arrays = bench_ours(name, g, c2w, K, size, cap, cots, repeats)
            row = {"capacity": cap, **row} if tight else row
            if ours is None and arrays:
                ours = arrays
        row = {**setting, "implementation": name, **row}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if stages:
        for row in bench_stages(g, c2w, K, size, capacity, repeats, tuple(m for m in stages if m != "kernels")):
            row = {**setting, "stages": True, **row}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


TIGHT_STEP = 1 << 16


def _capacity_for(g, c2w, K, size: int) -> tuple[int, int]:
    """(smallest power of two holding every camera's tile intersections, the largest camera's count)."""
    @jax.jit
    def count(means, scales, quats, c2w, K):
        def one(cw, k):
            cam = projection.camera_from_c2w(cw, k)
            p = projection.project_gaussians(means, scales, quats, cam, size, size)
            return tiles.intersect_tiles(p.means2d, p.radii, p.depths, size, size, 1).num_intersections
        return jax.vmap(one)(c2w, K)

    n = int(jnp.max(count(g.means[0], g.scales[0], g.quats[0], c2w[0], K[0])))
    return int(2 ** int(np.ceil(np.log2(max(n, 1))))), n


def print_table(rows: list[dict]) -> None:
    """Markdown tables: one line per (setting, implementation), ratios relative to gsplat (packed) and to
    our "pallas" row; then the gsplat image differences and the forward split."""
    key = lambda r: (r["gaussians"], r["views"], r["size"])
    main = [r for r in rows if not r.get("stages")]
    gs = {key(r): r for r in main if r["implementation"] == "gsplat"}
    pallas = {key(r): r for r in main if r["implementation"] == "pallas"}
    ms = lambda r, k: f"{r[k]:.1f}" if k in r else "-"
    gib = lambda r, k: f"{r[k] / 2**30:.2f}" if r.get(k, -1) > 0 else "-"
    ratio = lambda r, b, k: f"{r[k] / b[k]:.2f}" if k in r and k in b and b[k] > 0 else "-"
    print("\n| Gaussians | views x size | implementation | fwd ms | fwd+bwd ms | fwd+bwd / gsplat | fwd+bwd / pallas "
          "| fwd GiB | fwd+bwd GiB | fwd+bwd mem / gsplat |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in main:
        b, p = gs.get(key(r), {}), pallas.get(key(r), {})
        print(f"| {r['gaussians']} | {r['views']} x {r['size']}² | {r['implementation']} | {ms(r, 'forward_ms')} | "
              f"{ms(r, 'fwd_bwd_ms')} | {ratio(r, b, 'fwd_bwd_ms')} | {ratio(r, p, 'fwd_bwd_ms')} | "
              f"{gib(r, 'forward_bytes')} | {gib(r, 'fwd_bwd_bytes')} | {ratio(r, b, 'fwd_bwd_bytes')} |"
              + (f" error: {r['error'][:120]}" if "error" in r else ""))
    diffs = [r for r in main if "vs_ours" in r]
    if diffs:
        names = list(diffs[0]["vs_ours"])
        print("\ngsplat vs ours (pallas), relative L2 difference (max abs in brackets)\n")
        print("| Gaussians | views x size | gsplat | " + " | ".join(names) + " |")
        print("|---|---|---|" + "---|" * len(names))
        for r in diffs:
            cells = [f"{v[0]:.1e} ({v[1]:.1e})" for v in r["vs_ours"].values()]
            print(f"| {r['gaussians']} | {r['views']} x {r['size']}² | {r['implementation']} | " + " | ".join(cells)
                  + " |")
    split = [r for r in rows if r.get("stages")]
    if split:
        print("\nForward split (cumulative ms; the step's own time in brackets)\n")
        print("| Gaussians | views x size | intersection | projection | + depth rank, keys | + sort | + tile ranges "
              "(= intersection) | forward (rasterize) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in split:
            if r["method"] == "kernels":
                continue
            cells, prev = [], 0.0
            for k in ("projection", "+keys", "+sort", "intersection", "forward"):
                v = r.get(k + "_ms")
                cells.append("-" if v is None else f"{v:.1f} ({v - prev:.1f})")
                prev = prev if v is None else v
            print(f"| {r['gaussians']} | {r['views']} x {r['size']}² | {r['method']} | " + " | ".join(cells) + " |")
        for r in split:
            if "kernel_forward_ms" in r:
                print(f"\nPallas kernels alone (vmapped over the cameras): forward {r['kernel_forward_ms']:.1f} ms, "
                      f"backward {r['kernel_backward_ms']:.1f} ms; {r['intersections']} tile intersections, "
                      f"{r['backward_chunks']} chunks of {BACKWARD_CHUNK} walked by the backward")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="524288,131072", help="comma-separated Gaussian counts")
    parser.add_argument("--settings", default="8x448,1x1024", help="VIEWSxSIZE, comma-separated")
    parser.add_argument("--implementations", default="pallas,gsplat,gsplat_unpacked,pallas_two_key,xla",
                        help="pallas, pallas_two_key, xla, xla_two_key, gsplat, gsplat_unpacked")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=1e9, help="start no new setting after this")
    parser.add_argument("--xla-max-gaussians", type=int, default=1 << 30,
                        help="skip the pure-JAX rows above this many Gaussians (they take seconds per call)")
    parser.add_argument("--gsplat-so", default=None,
                        help="folder holding a prebuilt gsplat_cuda.so (else gsplat JIT-compiles on import)")
    parser.add_argument("--stages", nargs="?", const="radix,two_key", default="",
                        help="also time the Pallas kernels alone and projection / intersection / raster (first "
                        "setting only) for these intersection methods (default radix,two_key; 'kernels': none)")
    parser.add_argument("--sweep", default="", help="extra Pallas rows at the first setting only, e.g. "
                        "'pallas@32/4/4,pallas@16/4/4' (CHUNK/forward warps/backward warps)")
    parser.add_argument("--profile", action="store_true", help="only run the two Pallas kernels (default "
                        "config) twice at the first size and setting, for a profiler, and exit")
    parser.add_argument("--json", default=None, help="write all rows to this file")
    args = parser.parse_args(argv)
    print(f"{harness.device_info()}, relaxed atomics: "
          f"{atomics.relaxed_atomics_status()}")
    if args.profile:
        views, size = (int(v) for v in args.settings.split(",")[0].split("x"))
        g, (c2w, K) = geolrm_gaussians(int(args.sizes.split(",")[0])), cameras(views)
        bench_stages(g, c2w, K, size, _capacity_for(g, c2w, K, size)[0], 1, (), profile=True)
        return 0
    impls = args.implementations.split(",")
    gsplat = None
    if any(i.startswith("gsplat") for i in impls):
        gsplat, reason = gsplat_baseline.load(args.gsplat_so)
        print(f"gsplat: {'loaded ' + gsplat.__version__ if gsplat else 'skipped: ' + reason}", flush=True)
    rows, start, first = [], time.perf_counter(), True
    for num in (int(s) for s in args.sizes.split(",")):
        for setting in args.settings.split(","):
            if time.perf_counter() - start > args.budget_s:
                print(f"budget of {args.budget_s}s spent: skipping {num} {setting}")
                continue
            views, size = (int(v) for v in setting.split("x"))
            todo = [i for i in impls if not (i.startswith("xla") and num > args.xla_max_gaussians)]
            if first and args.sweep:
                todo += args.sweep.split(",")
            stages = tuple(args.stages.split(",")) if args.stages and first else ()
            rows += bench_setting(num, views, size, todo, args.repeats, gsplat, stages)
            first = False
            if args.json:
                harness.write_json(args.json, rows)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
