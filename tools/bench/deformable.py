"""Benchmark of multi-view deformable sampling on the GPU: Pallas kernels vs the XLA reference vs PyTorch's
grid_sample formulation (mmcv's ``multi_scale_deformable_attn_pytorch`` with views folded into the batch).

Shapes (the real model's): B = 1, V in {6, 21} views, levels 112^2 + 64^2 (448 px input) or 140^2 + 80^2
(560 px), 768 channels in 16 heads (C = 48), S in {4096, 8192, 16384} anchors, 2 levels x 8 points, fp32
(``--dtype bfloat16``: bf16 values and cotangent, as the model runs; the reference and the kernels accumulate
in fp32 and d_value is accumulated in fp32 before its cast).
Reference points are uniform in [0.1, 0.9]^2 independently per view and anchor (no spatial coherence
between consecutive queries: the harder case for caches), offsets ~ N(0, 2 px) of their level.

Columns:
- fwd / fwd+bwd: median wall time over repeated runs after a warm-up, synchronized each run (ms);
  fwd+bwd returns the output and all four gradients.
- mem: extra device memory of the op beyond its inputs, in GiB. JAX: ``memory_analysis()`` of the compiled
  function, temp + output bytes. torch: ``max_memory_allocated`` during the op minus the memory allocated
  before it.
- GB/s: compulsory bytes / time, where compulsory = every input read once and every output written once
  (fwd: value, reference points, offsets, weights, output; fwd+bwd adds the cotangent read and the four
  gradients written). Shown as a fraction of the measured device-to-device copy bandwidth (read + write).

Implementations: ``pallas`` (the Pallas kernels), ``xla`` (the reference) and ``torch``.

``--points`` picks the reference points: ``random`` (above), or model-like anchors of a sphere shell on a 128^3
grid projected into orbit views (``voxel``) or the SV3D preset views (``sv3d``: the model's raster anchor order;
``sv3d_morton``: Morton order); torch runs only on random points. ``--config key=value,...`` sets fields of the
Pallas kernels' ``DeformableConfig`` (block sizes, warps, lane chunks, window; see
``geolrm_kernels.deformable.config``) for a tuning sweep. ``--profile`` only runs the Pallas fwd+bwd once on the
first row's inputs (for ``ncu -k regex:deformable_sample``).

Usage: ``python tools/bench/deformable.py [--quick | --rows V:LEVELS:S,...] [--check] [--dtype bfloat16]
[--points sv3d] [--config forward_block_q=32,...] [--torch-json FILE] [--out DIR]``. torch runs in a subprocess
first, so the two frameworks never hold device memory at the same time; ``--torch-json`` reuses the torch numbers
of an earlier run instead.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
import traceback

import harness

HEADS, CHANNELS, LEVELS, POINTS, BATCH = 16, 48, 2, 8, 1
LEVEL_SETS = {"448px": ((112, 112), (64, 64)), "560px": ((140, 140), (80, 80))}
FULL = [(v, lv, s) for v in (6, 21) for lv in ("448px", "560px") for s in (4096, 8192, 16384)]
QUICK = [(6, "448px", 4096), (21, "560px", 16384)]
LEVEL_SETS["tiny"] = ((16, 16), (8, 8))
TINY = [(2, "tiny", 64)]  # --tiny: a CPU smoke test of this script (Pallas in interpret mode)
# JAX implementations in the table: Pallas, XLA reference.
JAX_IMPLS = ("pallas", "xla")


def compulsory_bytes(v, shapes, s, with_backward):
    length = sum(h * w for h, w in shapes)
    value = BATCH * v * length * HEADS * CHANNELS * 4
    small = BATCH * (v * s * 2 + s * HEADS * LEVELS * POINTS * 3) * 4
    out = BATCH * v * s * HEADS * CHANNELS * 4
    fwd = value + small + out
    return fwd + (out + value + small if with_backward else 0)


# ---------------------------------------------------------------------------------------------------- torch
def torch_formulation(value, ref, offsets, weights, shapes):
    """mmcv's multi_scale_deformable_attn_pytorch, views folded into the batch; (B, V, Q, H, C)."""
    import torch
    import torch.nn.functional as F

    b, v, _, heads, c = value.shape
    q = ref.shape[2]
    grids = 2 * (ref[:, :, :, None, None, None, :] + offsets[:, None]) - 1  # (B, V, Q, H, NL, P, 2)
    levels = value.reshape(b * v, -1, heads, c).split([h * w for h, w in shapes], dim=1)
    sampled = []
    for level, (h, w) in enumerate(shapes):
        vl = levels[level].flatten(2).transpose(1, 2).reshape(b * v * heads, c, h, w)
        gl = grids[:, :, :, :, level].reshape(b * v, q, heads, -1, 2).transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(vl, gl, mode="bilinear", padding_mode="zeros", align_corners=False))
    wt = weights[:, None].expand(b, v, *weights.shape[1:]).transpose(2, 3).reshape(b * v * heads, 1, q, -1)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * wt).sum(-1)  # (B*V*H, C, Q)
    return out.view(b, v, heads, c, q).permute(0, 1, 4, 2, 3)


def torch_worker(configs, reps, path, deadline):
    import torch

    def measure(v, shapes, s):
        dev = "cuda"
        length = sum(h * w for h, w in shapes)
        gen = torch.Generator(device=dev).manual_seed(0)
        value = torch.randn(BATCH, v, length, HEADS, CHANNELS, device=dev, generator=gen)
        ref = 0.1 + 0.8 * torch.rand(BATCH, v, s, 2, device=dev, generator=gen)
        wh = torch.tensor([[w, h] for h, w in shapes], device=dev, dtype=torch.float32)[:, None, :]
        offsets = torch.randn(BATCH, s, HEADS, LEVELS, POINTS, 2, device=dev, generator=gen) * 2 / wh
        weights = torch.softmax(torch.randn(BATCH, s, HEADS, LEVELS * POINTS, device=dev, generator=gen), -1)
        weights = weights.reshape(BATCH, s, HEADS, LEVELS, POINTS)
        cot = torch.randn(BATCH, v, s, HEADS, CHANNELS, device=dev, generator=gen)
        sync = lambda _: torch.cuda.synchronize()
        entry = {}
        with torch.no_grad():
            entry["fwd_ms"] = harness.median_ms(
                lambda: torch_formulation(value, ref, offsets, weights, shapes), reps, sync)
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = torch_formulation(value, ref, offsets, weights, shapes)
            torch.cuda.synchronize()
            entry["fwd_mem"] = torch.cuda.max_memory_allocated() - base
            del out
        leaves = [t.detach().requires_grad_() for t in (value, ref, offsets, weights)]

        def fwd_bwd():
            out = torch_formulation(*leaves, shapes)
            return out, torch.autograd.grad(out, leaves, cot)

        entry["fwdbwd_ms"] = harness.median_ms(fwd_bwd, reps, sync)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fwd_bwd()
        torch.cuda.synchronize()
        entry["fwdbwd_mem"] = torch.cuda.max_memory_allocated() - base
        del result
        return entry

    results = {}
    for v, lv, s in configs:
        if time.time() > deadline:
            print(f"torch V={v} {lv} S={s}: skipped (time budget)", flush=True)
            continue
        try:
            entry = measure(v, LEVEL_SETS[lv], s)
        except torch.OutOfMemoryError:
            entry = {"error": "OOM"}
        torch.cuda.empty_cache()
        results[f"{v}|{lv}|{s}"] = entry
        print(f"torch V={v} {lv} S={s}: {entry}", flush=True)
        with open(path, "w") as f:
            json.dump({"results": results, "torch": torch.__version__, "device": torch.cuda.get_device_name()}, f)
    with open(path, "w") as f:
        json.dump({"results": results, "torch": torch.__version__, "device": torch.cuda.get_device_name()}, f)


# ------------------------------------------------------------------------------------------------------ jax
def morton_code(ijk, bits=7):
    """(N, 3) non-negative ints -> (N,) Morton (Z-order) codes, x bits highest within each triple."""
    import numpy as np

    code = np.zeros(len(ijk), np.int64)
    for bit in range(bits):
        for j in range(3):
            code |= ((ijk[:, j].astype(np.int64) >> bit) & 1) << (3 * bit + 2 - j)
    return code


def shell_anchors(s, seed=0, grid=128, radius=0.35, order="raster"):
    """(S, 3) model-like anchors: S voxels of a 128^3 grid in [-0.5, 0.5]^3 on a sphere shell (an object's
    surface, 3 voxels thick), listed in raster (x, y, z) order as the model's ``select_anchors`` lists them,
    or in Morton order (order="morton")."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*(np.arange(grid),) * 3, indexing="ij"), -1).reshape(-1, 3)
    xyz = (ijk + 0.5) / grid - 0.5
    shell = np.flatnonzero(np.abs(np.linalg.norm(xyz, axis=-1) - radius) < 1.5 / grid)
    if shell.size < s:
        raise SystemExit(f"--points: only {shell.size} shell voxels for S={s}")
    chosen = np.sort(rng.choice(shell, s, replace=False))  # raster order
    if order == "morton":
        chosen = chosen[np.argsort(morton_code(ijk[chosen]), kind="stable")]
    return xyz[chosen]


def model_reference_points(v, s, points, seed=0):
    """(1, V, S, 2) model-like reference points of shell_anchors projected with the project's cameras.

    points "voxel": orbit views (20° elevation, radius 2, 50° fov), raster order; "sv3d" / "sv3d_morton":
    ``geolrm_jax.inputs.preset_cameras("sv3d", 1.5)`` (V < 21: evenly spaced views of the 21), raster /
    Morton order.
    """
    import numpy as np

    from geolrm_jax import geometry

    anchors = shell_anchors(s, seed, order="morton" if points.endswith("morton") else "raster")
    if points == "voxel":
        c2w = geometry.orbit_c2w(v, elevation_deg=20.0, radius=2.0)
        K = geometry.fov_to_intrinsics(np.full((v,), 50.0))
    else:
        from geolrm_jax import inputs

        c2w, K = inputs.preset_cameras("sv3d", 1.5)
        if v > len(c2w):
            raise SystemExit(f"--points {points}: the SV3D preset has {len(c2w)} views, V={v}")
        views = np.round(np.linspace(0, len(c2w) - 1, v)).astype(int)
        c2w, K = c2w[views], K[views]
    uv = geometry.project_points(np.broadcast_to(anchors, (v, s, 3)), c2w, K)
    return np.asarray(uv, np.float32)[None]


POINT_MODES = ("random", "voxel", "sv3d", "sv3d_morton")


def jax_inputs(jax, jnp, v, shapes, s, seed=0, points="random"):
    """Benchmark inputs; points other than "random": model-like reference points (model_reference_points)."""
    length = sum(h * w for h, w in shapes)
    k = jax.random.split(jax.random.key(seed), 5)
    value = jax.random.normal(k[0], (BATCH, v, length, HEADS, CHANNELS), jnp.float32)
    if points != "random":
        ref = jnp.asarray(model_reference_points(v, s, points, seed))
    else:
        ref = jax.random.uniform(k[1], (BATCH, v, s, 2), jnp.float32, 0.1, 0.9)
    wh = jnp.array([[w, h] for h, w in shapes], jnp.float32)[:, None, :]
    offsets = jax.random.normal(k[2], (BATCH, s, HEADS, LEVELS, POINTS, 2)) * 2 / wh
    weights = jax.nn.softmax(jax.random.normal(k[3], (BATCH, s, HEADS, LEVELS * POINTS)), -1)
    weights = weights.reshape(BATCH, s, HEADS, LEVELS, POINTS)
    cot = jax.random.normal(k[4], (BATCH, v, s, HEADS, CHANNELS), jnp.float32)
    return value, ref, offsets, weights, cot


def copy_bandwidth(jax, jnp):
    x = jnp.ones((512 * 1024 * 1024,), jnp.float32)  # 2 GiB
    f = jax.jit(lambda a: a + 1.0)
    ms = harness.median_ms(lambda: f(x), 10)
    return 2 * x.size * 4 / (ms * 1e-3)


def check_correctness(jax, jnp, ds, log, config=None):
    """Pallas vs XLA reference on the GPU: forward and the four gradients, max|a-b| / max|b|. Random-point
    cases (masks, borders, outside points, C = 24 / 40) exercise the d_value kernel's per-sample fallback; the
    "sv3d_morton" cases (model-like, spatially ordered) its windows."""
    cases = [  # (v, shapes, s, heads, c, value dtype, masked, points)
        (3, ((28, 28), (16, 16)), 300, 4, 24, jnp.float32, True, "random"),
        (4, ((37, 23), (9, 13)), 1000, 3, 40, jnp.float32, False, "random"),
        (6, ((112, 112), (64, 64)), 2048, 16, 48, jnp.bfloat16, True, "random"),
        (6, ((140, 140), (80, 80)), 2048, 16, 48, jnp.float32, True, "sv3d_morton"),
        (6, ((140, 140), (80, 80)), 2048, 16, 48, jnp.bfloat16, False, "sv3d"),
    ]
    ok = True
    for v, shapes, s, heads, c, dtype, masked, points in cases:
        length = sum(h * w for h, w in shapes)
        k = jax.random.split(jax.random.key(1), 6)
        value = jax.random.normal(k[0], (1, v, length, heads, c)).astype(dtype)
        if points == "random":
            ref = jax.random.uniform(k[1], (1, v, s, 2), minval=-0.1, maxval=1.1)
            ref = ref.at[:, :, :4].set(jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5 / 28, 1.0], [-0.3, 0.5]]))
            offsets = jax.random.normal(k[2], (1, s, heads, 2, POINTS, 2)) * 0.05
        else:
            ref = jnp.asarray(model_reference_points(v, s, points, seed=3))
            wh = jnp.array([[w, h] for h, w in shapes], jnp.float32)[:, None, :]
            offsets = jax.random.normal(k[2], (1, s, heads, 2, POINTS, 2)) * 3 / wh
        weights = jax.nn.softmax(jax.random.normal(k[3], (1, s, heads, 2 * POINTS)), -1).reshape(
            1, s, heads, 2, POINTS)
        view_mask = jnp.arange(v)[None] != 1 if masked else None
        query_mask = jax.random.uniform(k[4], (1, s)) > 0.2 if masked else None
        cot = jax.random.normal(k[5], (1, v, s, heads, c)).astype(dtype)
        results = {}
        for impl in ("xla", "pallas"):
            f = functools.partial(ds.deformable_sample, spatial_shapes=shapes, view_mask=view_mask,
                                  query_mask=query_mask, implementation=impl, config=config)
            out, vjp = jax.vjp(f, value, ref, offsets, weights)
            results[impl] = (out, *vjp(cot))
        tol = 1e-2 if dtype == jnp.bfloat16 else None
        for variant in ("pallas",):  # against "xla"
            for name, a, b, t in zip(("out", "d_value", "d_ref", "d_offsets", "d_weights"), results[variant],
                                     results["xla"], (tol or 1e-5,) + (tol or 1e-4,) * 4, strict=True):
                a = jnp.asarray(a, jnp.float32)
                b = jnp.asarray(b, jnp.float32)
                err = float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
                finite = bool(jnp.all(jnp.isfinite(a)))
                passed = finite and err <= t
                ok &= passed
                log(f"check {variant} V={v} {shapes} S={s} H={heads} C={c} {jnp.dtype(dtype).name} "
                    f"masked={masked} {points} {name}: rel err {err:.2e} (tol {t:.0e}) "
                    f"{'PASS' if passed else 'FAIL'}")
    return ok


def bench_jax(jax, ds, impl, inputs, shapes, reps, keep=None, config=None):
    """fwd / fwd+bwd median ms and temp+output bytes of the compiled functions, for one implementation."""
    value, ref, offsets, weights, cot = inputs
    f = lambda v, r, o, a: ds.deformable_sample(v, r, o, a, shapes, implementation=impl, config=config)

    def fwd_bwd(v, r, o, a, g):
        out, vjp = jax.vjp(f, v, r, o, a)
        return out, vjp(g)

    entry = {}
    for key, fn, args in (("fwd", f, (value, ref, offsets, weights)),
                          ("fwdbwd", fwd_bwd, (value, ref, offsets, weights, cot))):
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        entry[f"{key}_compile_s"] = round(time.perf_counter() - t0, 1)
        stats = compiled.memory_analysis()
        entry[f"{key}_ms"] = harness.median_ms(lambda compiled=compiled, args=args: compiled(*args), reps)
        if stats is not None:
            entry[f"{key}_mem"] = stats.temp_size_in_bytes + stats.output_size_in_bytes
            entry[f"{key}_temp"] = stats.temp_size_in_bytes
        if keep is not None and key == "fwdbwd":  # output and gradients, for a cross-check
            keep[impl] = jax.block_until_ready(compiled(*args))
    return entry


def _fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def _ratio(a, b):
    return None if a is None or b is None else a / b


def table(configs, results, bandwidth):
    gib = 2.0 ** 30
    lines = ["| V | levels | S | fwd ms Pallas / XLA / torch | fwd XLA÷P, torch÷P "
             "| fwd+bwd ms Pallas / XLA / torch | fwd+bwd XLA÷P, torch÷P "
             "| fwd+bwd mem GiB P / XLA / torch | fwd temp GiB P (out GiB) "
             "| Pallas GB/s fwd, fwd+bwd (% copy) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, lv, s in configs:
        key = f"{v}|{lv}|{s}"
        p, x, t = (results.get(impl, {}).get(key, {}) for impl in (*JAX_IMPLS, "torch"))
        shapes = LEVEL_SETS[lv]
        out_gib = BATCH * v * s * HEADS * CHANNELS * 4 / gib
        bw = []
        for k, with_bwd in (("fwd_ms", False), ("fwdbwd_ms", True)):
            if p.get(k):
                gbs = compulsory_bytes(v, shapes, s, with_bwd) / (p[k] * 1e-3) / 1e9
                bw.append(f"{gbs:.0f} ({100 * gbs * 1e9 / bandwidth:.0f}%)")
            else:
                bw.append("—")
        mem = " / ".join(_fmt(e.get("fwdbwd_mem") and e["fwdbwd_mem"] / gib) for e in (p, x, t))
        lines.append(
            f"| {v} | {lv} | {s} | {' / '.join(_fmt(e.get('fwd_ms')) for e in (p, x, t))} "
            f"| {_fmt(_ratio(x.get('fwd_ms'), p.get('fwd_ms')), '.1f')}×, "
            f"{_fmt(_ratio(t.get('fwd_ms'), p.get('fwd_ms')), '.1f')}× "
            f"| {' / '.join(_fmt(e.get('fwdbwd_ms')) for e in (p, x, t))} "
            f"| {_fmt(_ratio(x.get('fwdbwd_ms'), p.get('fwdbwd_ms')), '.1f')}×, "
            f"{_fmt(_ratio(t.get('fwdbwd_ms'), p.get('fwdbwd_ms')), '.1f')}× "
            f"| {mem} | {_fmt(p.get('fwd_temp') and p['fwd_temp'] / gib, '.3f')} ({out_gib:.2f}) "
            f"| {bw[0]}, {bw[1]} |")
    return "\n".join(lines)


def parse_rows(text):
    """"21:560px:16384,6:560px:8192" -> [(21, "560px", 16384), (6, "560px", 8192)]."""
    rows = []
    for item in text.split(","):
        v, lv, s = item.split(":")
        if lv not in LEVEL_SETS:
            raise SystemExit(f"--rows: unknown levels {lv!r} (one of {sorted(LEVEL_SETS)})")
        rows.append((int(v), lv, int(s)))
    return rows


def parse_config(config_class, text):
    """"forward_block_q=32,window=4" -> config_class(forward_block_q=32, window=4) (ints and true/false)."""
    fields = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        fields[name] = {"true": True, "false": False}.get(value.lower(), None)
        if fields[name] is None:
            fields[name] = int(value)
    return config_class(**fields)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK}")
    parser.add_argument("--rows", help="only these rows, e.g. 21:560px:16384,6:560px:8192")
    parser.add_argument("--check", action="store_true", help="Pallas vs XLA reference correctness on GPU first")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="value (and cotangent) dtype (the model runs bfloat16)")
    parser.add_argument("--points", default="random", choices=POINT_MODES,
                        help="reference points: uniform random, or model-like "
                             "anchors of a sphere shell projected into orbit views (voxel) or the SV3D preset "
                             "views, in raster (sv3d) or Morton (sv3d_morton) anchor order")
    parser.add_argument("--config", default="",
                        help="DeformableConfig fields of the Pallas kernels, e.g. forward_block_q=32,window=4")
    parser.add_argument("--profile", action="store_true",
                        help="only run the Pallas fwd+bwd once on the first row's inputs (--points), e.g. under ncu")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-json", help="reuse torch results written by an earlier run instead of measuring")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for json/markdown/log")
    parser.add_argument("--tiny", action="store_true", help="smoke test of this script on CPU")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting new measurements after this many seconds (torch gets 30%%)")
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = parse_rows(args.rows) if args.rows else TINY if args.tiny else QUICK if args.quick else FULL
    # The QUICK shapes first, so that a time budget keeps the ones that matter most.
    order = configs if args.rows else sorted(configs, key=lambda c: c not in QUICK)
    if args.torch_worker:
        torch_worker(order, args.reps, args.torch_worker, args.deadline)
        return 0
    start = time.time()
    deadline = start + args.budget_s if args.budget_s else float("inf")
    os.makedirs(args.out, exist_ok=True)
    log_file = open(os.path.join(args.out, "bench_deformable.log"), "a")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    results = {**{impl: {} for impl in JAX_IMPLS}, "torch": {}}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv}
    if args.torch_json and args.points == "random":  # torch ran on random points
        with open(args.torch_json) as f:
            torch_json = json.load(f)
        results["torch"] = torch_json["results"]
        meta["torch"] = torch_json["torch"] + f" (from {args.torch_json})"
    elif not args.no_torch and not args.profile and args.points == "random":
        # torch first, in its own process: JAX holds no memory yet; random points only
        path = os.path.join(args.out, "bench_deformable_torch.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", path, "--reps", str(args.reps),
               "--deadline", str(start + 0.3 * (deadline - start))]
        cmd += ["--rows", args.rows] if args.rows else ["--quick"] if args.quick else ["--tiny"] if args.tiny else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log(proc.stdout + proc.stderr[-3000:])
        if os.path.exists(path):
            with open(path) as f:
                torch_json = json.load(f)
            results["torch"] = torch_json["results"]
            meta["torch"] = torch_json["torch"]
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    from geolrm_kernels import deformable as ds

    config = parse_config(ds.DeformableConfig, args.config)

    meta.update(harness.device_info(), dtype=args.dtype)
    meta["config"] = str(config)
    if args.profile:  # one Pallas fwd+bwd on the first row's inputs, nothing else
        v, lv, s = order[0]
        value, ref, offsets, weights, cot = jax_inputs(jax, jnp, v, LEVEL_SETS[lv], s, points=args.points)
        impl = "pallas_interpret" if jax.default_backend() == "cpu" else "pallas"
        f = lambda *a: ds.deformable_sample(*a, LEVEL_SETS[lv], implementation=impl, config=config)
        t0 = time.perf_counter()
        out, vjp = jax.vjp(jax.jit(f), value.astype(args.dtype), ref, offsets, weights)
        jax.block_until_ready(vjp(cot.astype(args.dtype)))
        log(f"profile V={v} {lv} S={s} {args.points} {args.dtype} {config}: "
            f"{time.perf_counter() - t0:.1f} s with compilation")
        return 0
    bandwidth = copy_bandwidth(jax, jnp)
    meta["copy_GBps"] = bandwidth / 1e9
    log(f"{meta}")
    meta["points"] = args.points
    if args.check:
        try:
            meta["check_passed"] = check_correctness(jax, jnp, ds, log, config)
        except Exception:
            meta["check_passed"] = False
            log("check crashed:\n" + traceback.format_exc()[-4000:])

    def save():
        harness.write_json(os.path.join(args.out, "bench_deformable.json"), {"meta": meta, "results": results})
        with open(os.path.join(args.out, "bench_deformable.md"), "w") as f:
            f.write(f"{meta}\n\n{table(configs, results, bandwidth)}\n")

    for v, lv, s in order:
        key = f"{v}|{lv}|{s}"
        if time.time() > deadline:
            log(f"V={v} {lv} S={s}: skipped (time budget)")
            continue
        inputs = jax_inputs(jax, jnp, v, LEVEL_SETS[lv], s, points=args.points)
        inputs = (inputs[0].astype(args.dtype), *inputs[1:4], inputs[4].astype(args.dtype))
        kept = {}
        for impl in JAX_IMPLS:
            run_impl = "pallas_interpret" if jax.default_backend() == "cpu" and impl != "xla" else impl
            try:
                results[impl][key] = bench_jax(jax, ds, run_impl, inputs, LEVEL_SETS[lv], args.reps, keep=kept,
                                               config=config)
            except Exception as err:
                results[impl][key] = {"error": repr(err)[:300]}
                log(traceback.format_exc()[-3000:])
            log(f"{impl} V={v} {lv} S={s}: {results[impl][key]}")
        pallas_run = "pallas_interpret" if jax.default_backend() == "cpu" else "pallas"
        if pallas_run in kept and "xla" in kept:  # Pallas vs XLA on the benchmark's own inputs
            leaves = zip(jax.tree.leaves(kept[pallas_run]), jax.tree.leaves(kept["xla"]), strict=True)
            errs = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in leaves]
            results["pallas"][key]["rel_err_vs_xla"] = errs
            log(f"V={v} {lv} S={s}: Pallas vs XLA rel err (out, d_value, d_ref, d_offsets, d_weights) {errs}")
        del inputs, kept
        save()
    save()
    text = table(configs, results, bandwidth)
    log(f"\n{meta['device']}, jax {meta['jax']}, torch {meta.get('torch')}, {meta['date']}, "
        f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read+write)\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
