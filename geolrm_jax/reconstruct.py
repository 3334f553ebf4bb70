"""``geolrm-jax reconstruct``: posed images -> Gaussians (.ply, .splat), a turntable video, per-view renders.

    geolrm-jax reconstruct [INPUT] [-o OUT] [--checkpoint CKPT] [--model-config official|tiny|CONFIG.json]

INPUT (default: the bundled sample ``geolrm_jax/assets/sample``, 6 views of a mug on a saucer) is any input
of ``geolrm_jax.inputs`` (a folder with ``cameras.json`` / ``transforms.json``, an SV3D orbit video or frame
folder, a Zero123++ grid image). Outputs, all inside OUT (default ``outputs/<name>``):
``gaussians.ply`` (standard 3DGS layout, or the original's with ``--ply-format original``),
``gaussians.splat``, ``turntable.mp4`` (or ``.gif``), optionally ``views/NNN.png`` (renders at the input
cameras), ``mesh.glb`` and ``mesh.obj`` with ``--mesh`` (``geolrm_jax.mesh``) and ``summary.json`` (timings,
peak device memory, weights used, counts). Everything is written to a
temporary folder next to OUT and renamed into place at the end (``io_atomic.staged_output``), so a failure,
Ctrl-C or SIGTERM leaves no partial output. An existing OUT needs ``--overwrite`` and is replaced only when it
holds nothing but these files; OUT may not be, contain or lie inside the input, the checkpoint or the current
folder. Every argument and path is checked before the weights are loaded; an empty result (no anchor, no
Gaussian above ``--min-opacity``) is an error.

Weights, first found wins:

1. ``--checkpoint PATH``: an Orbax folder written by ``geolrm-jax convert``, or a state dict
   (.safetensors / .ckpt / .pt) converted on the fly;
2. ``$GEOLRM_CHECKPOINT`` (same kinds);
3. the newest entry (by modification time) in ``$GEOLRM_CACHE`` (default ``~/.cache/geolrm_jax``): an Orbax
   folder or a state dict file (where ``geolrm-jax convert`` puts the released weights);
4. the demo model shipped in the package (``geolrm_jax/assets/checkpoints/demo``): the GeoLRM architecture at
   9M parameters, trained by this project on procedural objects (``configs/demo.py``). It reconstructs
   objects like its training data; convert the released weights for real objects.

Without any, the command stops; ``--random-weights`` runs seeded random weights instead (a pipeline test, NOT a
reconstruction; the tiny architecture unless ``--model-config``). The first printed line names the model.

A checkpoint's architecture is ``--model-config``; without it, the config that ``geolrm-jax convert`` saved in an
Orbax folder (``geolrm_model_config.json``), else ``official``. Cache entries that are not readable
checkpoints (e.g. a stray 0-byte file) are skipped with a warning.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
import time

import numpy as np

from geolrm_jax import export, inference, inputs, io_atomic

SAMPLE_DIR = pathlib.Path(__file__).parent / "assets" / "sample"
SV3D_IMAGE_SIZE = 560  # run_geolrm.py resizes SV3D frames to 560, run_geolrm_zero123.py to 448
MAX_VIEWS = 21
OUTPUT_NAMES = ("gaussians.ply", "gaussians.splat", "turntable.mp4", "turntable.gif", "summary.json", "views")


class EmptyResultError(ValueError):
    """The model produced nothing to export (no anchor or no Gaussian above the opacity threshold)."""


def output_problem(path: pathlib.Path) -> str | None:
    """None when ``path`` holds only what this command writes (``--overwrite`` may replace it), else what else
    it holds."""
    if not path.is_dir():
        return "it is a file"
    foreign = [p.name for p in path.iterdir() if p.name not in OUTPUT_NAMES]
    views = path / "views"
    if views.is_dir():
        foreign += [f"views/{p.name}" for p in views.iterdir() if not re.fullmatch(r"\d{3,}\.png", p.name)]
    elif views.exists():
        foreign.append("views")
    return f"it holds {', '.join(sorted(foreign)[:3])}" if foreign else None


def turntable_cameras(num_frames: int, distance: float = 1.5, elevation: float = 20.0, fov: float = 39.6):
    """The original's video cameras: ``num_frames`` poses on a circle (azimuth from 0), fov 39.6 deg."""
    from geolrm_jax import geometry

    c2w = np.asarray(geometry.orbit_c2w(num_frames, elevation_deg=elevation, radius=distance))
    K = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(fov)), (num_frames, 3, 3))
    return c2w, np.ascontiguousarray(K)


def default_video_settings() -> tuple[int, int]:
    """Default turntable (size, frames): (512, 120) as the original, (256, 60) on a CPU backend (8x fewer
    pixels: the turntable then takes seconds, not minutes; tools/bench/turntable.py)."""
    import jax

    return (256, 60) if jax.default_backend() == "cpu" else (512, 120)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geolrm-jax reconstruct", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", default=str(SAMPLE_DIR),
                   help="folder with cameras.json/transforms.json, SV3D video or frames, Zero123++ grid "
                   "(default: the bundled sample, geolrm_jax/assets/sample)")
    p.add_argument("-o", "--output", help="output folder (default outputs/<input name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--input-kind", choices=inputs.INPUT_KINDS, default="auto")
    p.add_argument("--num-views", type=int, help="use this many views, spread evenly (Zero123++: 4 = 0,2,4,5)")
    p.add_argument("--max-views", type=int, default=MAX_VIEWS, help="V_max (default %(default)s)")
    p.add_argument("--radius", type=float, default=1.5, help="camera radius of the SV3D/Zero123++ presets")
    p.add_argument("--image-size", type=int,
                   help="model input size (default: the model's; official 448, SV3D 560, demo 256, tiny 56; "
                   "a multiple of 4 and of the DINO patch)")
    p.add_argument("--checkpoint", help="Orbax folder or .safetensors/.ckpt/.pt (see the search order)")
    p.add_argument("--model-config", help="official | tiny | config.json (default: official with a "
                   "checkpoint, tiny with random weights)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (default: the config's)")
    p.add_argument("--random-weights", action="store_true",
                   help="run seeded random weights instead of a checkpoint (tests the pipeline; NOT a reconstruction)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    p.add_argument("--ply-format", choices=export.PLY_FORMATS, default="standard")
    p.add_argument("--ply-sh-rest", action="store_true", help="also write 45 zero f_rest_* (degree-3 viewers)")
    p.add_argument("--min-opacity", type=float, default=export.DEFAULT_MIN_OPACITY,
                   help="drop Gaussians below this opacity in the exports (the original's 0.005)")
    p.add_argument("--video-format", choices=["mp4", "gif", "none"], default="mp4")
    p.add_argument("--video-size", type=int,
                   help="turntable resolution (square, even for MP4; default 512, on a CPU backend 256)")
    p.add_argument("--video-frames", type=int, help="turntable frames (default 120, on a CPU backend 60)")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--distance", type=float, default=1.5, help="turntable camera distance")
    p.add_argument("--elevation", type=float, default=20.0, help="turntable elevation in degrees")
    p.add_argument("--render-views", action="store_true", help="also render the input views to views/NNN.png")
    p.add_argument("--render-size", type=int, help="size of the per-view renders (default --video-size)")
    p.add_argument("--mesh", action="store_true", help="also write a coloured mesh, mesh.glb and mesh.obj "
                   "(TSDF fusion of splatted depth; needs the 'mesh' extra)")
    p.add_argument("--mesh-resolution", type=int, default=128, help="TSDF voxels along the longest side")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _default_image_size(args, preset: str | None, kind: str, config_input_size: int | None = None) -> int:
    if args.image_size is not None:
        return args.image_size
    if preset in inference.DEFAULT_IMAGE_SIZE:
        base = inference.DEFAULT_IMAGE_SIZE[preset]
        return SV3D_IMAGE_SIZE if (kind == "sv3d" and preset == "official") else base
    return int(config_input_size) if config_input_size else 448


def check_arguments(args) -> None:
    """Every numeric argument in range; ``ValueError`` naming the flag (before any file is read)."""

    def need(ok: bool, flag: str, value, what: str):
        if not ok:
            raise ValueError(f"{flag} {value}: {what}")

    for flag, value in (("--num-views", args.num_views), ("--max-views", args.max_views),
                        ("--image-size", args.image_size), ("--render-size", args.render_size)):
        if value is not None:
            need(value >= 1, flag, value, "must be at least 1")
    for flag, value in (("--radius", args.radius), ("--distance", args.distance)):
        need(math.isfinite(value) and value > 0, flag, value, "must be a positive distance")
    need(math.isfinite(args.min_opacity) and 0 <= args.min_opacity < 1, "--min-opacity", args.min_opacity,
         "must be in [0, 1)")
    if args.video_format != "none":
        need(args.video_frames >= 1, "--video-frames", args.video_frames, "must be at least 1")
        need(args.video_size >= 2, "--video-size", args.video_size, "must be at least 2")
        need(1 <= args.fps <= 1000, "--fps", args.fps, "must be in 1..1000")
        need(math.isfinite(args.elevation) and -90 < args.elevation < 90, "--elevation", args.elevation,
             "must be in (-90, 90) degrees")
        if args.video_format == "mp4" and args.video_size % 2:
            raise ValueError(f"--video-size {args.video_size}: MP4 (yuv420p) needs an even size")
    if args.render_views:
        need((args.render_size or args.video_size) >= 1, "--render-size", args.render_size or args.video_size,
             "must be at least 1")
    if args.mesh:
        need(args.mesh_resolution >= 16, "--mesh-resolution", args.mesh_resolution, "must be at least 16")
        try:
            import geolrm_jax.mesh  # noqa: F401
        except ImportError as err:
            raise ValueError(f"--mesh needs the 'mesh' extra (pip install -e '.[mesh]'): {err}") from err


def run(args) -> dict:
    """The whole command; returns the summary dict (also written to summary.json).

    Order: arguments, input kind, checkpoint and architecture, output folder (checked, then staged), inputs;
    only then the weights are loaded and the model runs."""
    from tqdm import tqdm

    if args.video_size is None or args.video_frames is None:
        size, frames = default_video_settings()
        args.video_size = size if args.video_size is None else args.video_size
        args.video_frames = frames if args.video_frames is None else args.video_frames
    check_arguments(args)
    source = pathlib.Path(args.input)
    if not source.exists():
        raise inputs.InputError(f"{source}: no such file or folder")
    kind = inputs.detect_kind(source) if args.input_kind == "auto" else args.input_kind
    if args.random_weights and args.checkpoint:
        raise ValueError("--random-weights and --checkpoint: choose one")
    choice = inference.resolve_model(args.checkpoint, args.model_config, args.dtype,
                                     random_weights=args.random_weights)
    if choice.checkpoint is None and not args.random_weights:
        raise ValueError("no checkpoint found (--checkpoint, $GEOLRM_CHECKPOINT, the cache "
                         f"{inference.cache_dir()} or the bundled demo model in {inference.BUNDLED_CHECKPOINTS}); "
                         "convert the released weights with 'geolrm-jax convert', or test the pipeline with "
                         "--random-weights")
    config = choice.config
    print(f"model: {inference.describe_model(choice)}", flush=True)
    image_size = _default_image_size(args, choice.preset, kind, config.get("input_size"))
    patch = config.encoder.dino_patch
    if image_size % int(np.lcm(4, patch)):
        raise ValueError(f"--image-size {image_size} must be a multiple of {int(np.lcm(4, patch))} "
                         f"(4 for the low-level features and the DINO patch {patch})")
    out_dir = pathlib.Path(args.output or pathlib.Path("outputs") / (io_atomic.resolved(source).stem
                                                                       or "reconstruction"))
    config_file = args.model_config if args.model_config not in (None, "official", "tiny") else None
    dest = io_atomic.check_destination(out_dir, inputs=[source, choice.checkpoint, config_file],
                                       overwrite=args.overwrite, owned=output_problem)
    stages = ["read inputs", "load weights", "proposal (stage 1)", "reconstruction (stage 2)", "export"]
    if args.video_format != "none":
        stages.append("turntable")
    if args.render_views:
        stages.append("input-view renders")
    if args.mesh:
        stages.append("mesh")
    bar = tqdm(total=len(stages), disable=args.no_progress, unit="stage", file=sys.stderr)
    timings: dict[str, float] = {}

    def stage(name):
        io_atomic.raise_if_interrupted()  # a signal whose exception was swallowed stops here
        bar.set_description(name)
        return time.perf_counter()

    def done(name, t0):
        timings[name] = time.perf_counter() - t0
        bar.update(1)

    try:
        t0 = stage(stages[0])
        views = inputs.load_views(source, image_size, kind, args.num_views, args.max_views, args.radius)
        done(stages[0], t0)
        with io_atomic.staged_output(dest) as tmp:
            summary = _reconstruct_into(tmp, args, choice, views, kind, image_size, stage, done, timings)
    finally:
        bar.close()
    summary["output"] = str(out_dir)
    return summary


def _reconstruct_into(tmp: pathlib.Path, args, choice: inference.ModelChoice, views, kind: str, image_size: int, stage,
                      done, timings) -> dict:
    """Load the weights, run both stages and write every output into the staging folder ``tmp``."""
    import jax
    import jax.numpy as jnp

    config = choice.config
    num_views = len(views.images)
    t0 = stage("load weights")
    model, weights, random_weights = inference.load_model(choice, args.seed)
    done("load weights", t0)

    batch = (jnp.asarray(views.images)[None], jnp.asarray(views.c2w)[None], jnp.asarray(views.K)[None],
             jnp.ones((1, num_views), bool))
    t0 = stage("proposal (stage 1)")
    anchors, anchor_mask = jax.block_until_ready(model.propose(model.variables, *batch))
    num_anchors = int(np.asarray(anchor_mask).sum())
    if num_anchors == 0:
        raise EmptyResultError("no anchors: the proposal network found no occupied voxel, so there is nothing "
                               "to reconstruct (are the cameras far from the object or not looking at it?); "
                               "nothing written")
    done("proposal (stage 1)", t0)
    t0 = stage("reconstruction (stage 2)")
    gaussians = jax.block_until_ready(model.reconstruct(model.variables, *batch, anchors, anchor_mask))
    done("reconstruction (stage 2)", t0)

    t0 = stage("export")
    host = export.to_numpy_gaussians(gaussians, args.min_opacity)
    if host.means.shape[0] == 0:
        raise EmptyResultError(f"no Gaussian has opacity >= --min-opacity {args.min_opacity} "
                               f"({int(np.asarray(gaussians.opacities).size)} predicted); nothing written")
    export.write_ply(tmp / "gaussians.ply", host, args.ply_format, min_opacity=args.min_opacity,
                     sh_rest=args.ply_sh_rest)
    export.write_splat(tmp / "gaussians.splat", host, min_opacity=args.min_opacity)
    done("export", t0)
    if args.video_format != "none":
        t0 = stage("turntable")
        c2w, K = turntable_cameras(args.video_frames, args.distance, args.elevation)
        frames = inference.render_views(gaussians, c2w, K, args.video_size)
        export.write_video(tmp / f"turntable.{args.video_format}", frames, fps=args.fps)
        done("turntable", t0)
    if args.render_views:
        t0 = stage("input-view renders")
        renders = inference.render_views(gaussians, views.c2w, views.K, args.render_size or args.video_size)
        (tmp / "views").mkdir()
        for i, image in enumerate(renders):
            export.write_image(tmp / "views" / f"{i:03d}.png", image)
        done("input-view renders", t0)
    if args.mesh:
        from geolrm_jax import mesh

        t0 = stage("mesh")
        mesh.write_mesh_files(tmp, host, mesh.MeshSettings(resolution=args.mesh_resolution))
        done("mesh", t0)
    summary = {
        "input": str(args.input), "input_kind": kind, "num_views": num_views, "image_size": image_size,
        "model": inference.describe_model(choice), "weights": weights, "random_weights": random_weights,
        "dtype": config.dtype,
        "anchors": num_anchors, "gaussians_written": int(host.means.shape[0]),
        "ply_format": args.ply_format, "timings_s": timings,
        "peak_device_memory_bytes": inference.peak_device_memory(), "device": str(jax.local_devices()[0]),
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_summary(summary: dict) -> None:
    if summary["random_weights"]:
        print(f"WARNING: {inference.RANDOM_WEIGHTS_NOTE}.")
    print(f"weights: {summary['weights']}")
    print(f"input: {summary['input']} ({summary['input_kind']}, {summary['num_views']} views at "
          f"{summary['image_size']} px); dtype {summary['dtype']}; device {summary['device']}")
    print(f"anchors: {summary['anchors']}; Gaussians written: {summary['gaussians_written']}")
    print("timings:")
    for name, seconds in summary["timings_s"].items():
        print(f"  {name:<26} {seconds:8.3f} s")
    print(f"  {'total':<26} {sum(summary['timings_s'].values()):8.3f} s  (stages 1-2 include compilation)")
    print(f"peak device memory: {inference.format_bytes(summary['peak_device_memory_bytes'])}")
    print(f"outputs in {summary['output']}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    def command():
        print_summary(run(args))

    return io_atomic.run_command("geolrm-jax reconstruct", command)
