"""CPU benchmark of the turntable: the splatter's XLA path against `render.preview`, side by side, same scenes.

    JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 python tools/bench/turntable.py [--json tools/bench/results/turntable_cpu.json]
        [--nums 32,30000,130000] [--sizes 256,512] [--frames 120] [--old-frames 8] [--default-nums 50000,130000]

Old path: what `inference.render_views` ran on every backend before the preview renderer, i.e. `splat.render`
jitted (XLA rasterizer, `rasterize.forward_xla`) on chunks of 8 cameras, the tile capacity grown on overflow.
It is timed on the first `--old-frames` cameras of the turntable only (it takes seconds per frame), after a
compiling run on the same chunk shape. New path: `render.preview.render_preview` on all `--frames` cameras:
"cold" is its first call at that shape in this process (compilation included), "warm" the best of two more.
Ratios compare the warm seconds per frame; `max_abs_diff` is the largest difference between the two paths' images
on the frames both rendered (RGB in [0, 1]), `pixels_over_*` count the pixels differing by more than that (see
`render.preview`'s module doc: cut-off flips). `encode_s` is `export.write_video` (MP4) of the new frames.

Scenes mimic the demo model's output (configs/demo.py: up to 4096 anchors x 32 Gaussians, scale_max 0.02):
anchors are voxels of a 32^3 grid of [-0.5, 0.5]^3 within one voxel of a compound surface (sphere, box, torus),
each with 32 Gaussians offset by N(0, 0.015), scales sigmoid(N(0, 1.5)) * 0.02 per axis, random rotations,
opacities sigmoid(N(1, 2.5)) and a colour per anchor. Cameras: `reconstruct.turntable_cameras` (radius 1.5,
elevation 20 deg, fov 39.6 deg). `default_turntable` times what `geolrm-jax reconstruct` does on a CPU backend
with its default turntable settings (render + encode, cold and warm). Times are wall-clock seconds; `cpu_s` is
the process CPU time of the same call (on a machine shared with other work, wall time depends on the load; the
load average is recorded).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax import export, inference, reconstruct
from geolrm_jax.render.gaussians import Gaussians
from geolrm_jax.render.preview import render_preview
from geolrm_jax.render.splat import default_capacity

HERE = pathlib.Path(__file__).resolve().parent


def demo_like_gaussians(num: int, seed: int = 0) -> Gaussians:
    """`num` Gaussians (fields (1, num, ...)) distributed like the demo model's output; see the module doc."""
    rng = np.random.default_rng(seed)
    centres = (np.arange(32) + 0.5) / 32 - 0.5
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
    sphere = np.linalg.norm(grid - [0.0, 0.12, 0.0], axis=-1) - 0.25
    q = np.abs(grid - [0.0, -0.2, 0.0]) - [0.35, 0.08, 0.25]
    box = np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)
    torus = np.hypot(np.linalg.norm(grid[:, [0, 2]], axis=-1) - 0.3, grid[:, 1] - 0.3) - 0.05
    shell = grid[np.abs(np.minimum(np.minimum(sphere, box), torus)) < 1.0 / 32]
    anchors = -(-num // 32)
    anchor = shell[rng.choice(len(shell), anchors, replace=anchors > len(shell))]
    means = (anchor[:, None] + rng.normal(0, 0.015, (anchors, 32, 3))).reshape(-1, 3)[:num]
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    quats = rng.normal(size=(num, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    rgbs = np.repeat(rng.uniform(0, 1, (anchors, 3)), 32, 0)[:num] + rng.normal(0, 0.05, (num, 3))
    f = lambda x: jnp.asarray(np.asarray(x)[None], jnp.float32)  # noqa: E731
    return Gaussians(f(means), f(sigmoid(rng.normal(0, 1.5, (num, 3))) * 0.02), f(quats),
                     f(sigmoid(rng.normal(1.0, 2.5, num))), f(np.clip(rgbs, 0, 1)))


def splatter_render_views(gaussians, c2w, K, size: int, chunk: int = 8) -> np.ndarray:
    """The old `inference.render_views`: `splat.render` (XLA path on CPU) on chunks of `chunk` cameras."""
    capacity = default_capacity(gaussians.means.shape[-2], size, size)
    bg = jnp.ones((3,), jnp.float32)
    frames = []
    for start in range(0, len(c2w), chunk):
        index = np.minimum(np.arange(start, start + chunk), len(c2w) - 1)
        cw, k = jnp.asarray(c2w[index])[None], jnp.asarray(K[index])[None]
        while True:
            out = inference._jitted_render(size, size, capacity)(gaussians, cw, k, bg)
            overflow = int(out.overflow)
            if overflow == 0:
                break
            capacity = int(2 ** int(np.ceil(np.log2(capacity + overflow))))
        frames.append(np.asarray(out.rgb[0])[: len(c2w) - start])
    return np.concatenate(frames)


def timed(fn, *args, **kwargs):
    """(result, wall seconds, process CPU seconds) of one call."""
    usage = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # noqa: E731
    cpu, wall = usage(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, usage() - cpu


def machine_info() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average_start": os.getloadavg(), "python": platform.python_version(), "jax": jax.__version__,
            "numpy": np.__version__, "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def encode_seconds(frames: np.ndarray) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return timed(export.write_video, pathlib.Path(tmp) / "turntable.mp4", frames, 30)[1]


def compare(num: int, size: int, frames: int, old_frames: int) -> dict:
    g = demo_like_gaussians(num)
    c2w, K = reconstruct.turntable_cameras(frames)
    new, cold, cold_cpu = timed(render_preview, g, c2w, K, size, size)
    warm = min((timed(render_preview, g, c2w, K, size, size) for _ in range(2)), key=lambda r: r[1])
    row = {"num": num, "size": size, "frames": frames, "new_cold_s": cold, "new_cold_cpu_s": cold_cpu,
           "new_warm_s": warm[1], "new_warm_cpu_s": warm[2], "new_ms_per_frame": 1e3 * warm[1] / frames,
           "encode_s": encode_seconds(new)}
    if old_frames:
        chunk = min(8, old_frames)
        timed(splatter_render_views, g, c2w[:chunk], K[:chunk], size, chunk)  # compiles
        old, seconds, cpu = timed(splatter_render_views, g, c2w[:old_frames], K[:old_frames], size, chunk)
        diff = np.abs(old - new[:old_frames]).max(-1)
        row.update(old_frames=old_frames, old_s=seconds, old_cpu_s=cpu, old_ms_per_frame=1e3 * seconds / old_frames,
                   speedup=(seconds / old_frames) / (warm[1] / frames), max_abs_diff=float(diff.max()),
                   pixels_compared=int(diff.size))
        row.update({f"pixels_over_{t:g}": int(np.sum(diff > t)) for t in (1e-5, 1e-4, 1e-3)})
    return row


def default_turntable(num: int) -> dict:
    """`reconstruct`'s turntable on this backend with its default size and frame count: render + encode."""
    size, frames = reconstruct.default_video_settings()
    g = demo_like_gaussians(num, seed=1)
    c2w, K = reconstruct.turntable_cameras(frames)
    out = {"num": num, "size": size, "frames": frames}
    for label in ("cold", "warm"):
        rendered, seconds, cpu = timed(inference.render_views, g, c2w, K, size)
        encode = encode_seconds(rendered)
        out.update({f"{label}_render_s": seconds, f"{label}_render_cpu_s": cpu, f"{label}_encode_s": encode,
                    f"{label}_total_s": seconds + encode})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(HERE / "results" / "turntable_cpu.json"), help="output file ('' for none)")
    p.add_argument("--nums", default="32,30000,130000", help="numbers of Gaussians")
    p.add_argument("--sizes", default="256,512", help="image sizes (square)")
    p.add_argument("--frames", type=int, default=120, help="turntable frames for the new path")
    p.add_argument("--old-frames", type=int, default=8, help="frames for the old path (0: skip it)")
    p.add_argument("--default-nums", default="50000,130000", help="numbers of Gaussians for default_turntable")
    args = p.parse_args(argv)
    if jax.default_backend() != "cpu":
        print("tools/bench/turntable.py measures the CPU path: run it with JAX_PLATFORMS=cpu", file=sys.stderr)
        return 2
    result = {"machine": machine_info(), "settings": vars(args), "rows": [], "default_turntable": []}
    print(f"{'N':>7} {'px':>4} | {'new cold s':>10} {'new warm s':>10} {'ms/frame':>8} {'encode s':>8} | "
          f"{'old ms/frame':>12} {'speedup':>8} {'max diff':>9}")
    for num in (int(x) for x in args.nums.split(",")):
        for size in (int(x) for x in args.sizes.split(",")):
            row = compare(num, size, args.frames, args.old_frames)
            result["rows"].append(row)
            print(f"{num:>7} {size:>4} | {row['new_cold_s']:>10.2f} {row['new_warm_s']:>10.2f} "
                  f"{row['new_ms_per_frame']:>8.1f} {row['encode_s']:>8.2f} | "
                  f"{row.get('old_ms_per_frame', float('nan')):>12.0f} {row.get('speedup', float('nan')):>8.1f} "
                  f"{row.get('max_abs_diff', float('nan')):>9.2e}")
    for num in (int(x) for x in args.default_nums.split(",") if x):
        row = default_turntable(num)
        result["default_turntable"].append(row)
        print(f"default turntable ({row['size']} px, {row['frames']} frames), N={num}: "
              f"cold {row['cold_total_s']:.2f} s (render {row['cold_render_s']:.2f} "
              f"+ encode {row['cold_encode_s']:.2f}), warm {row['warm_total_s']:.2f} s")
    result["machine"]["load_average_end"] = os.getloadavg()
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
