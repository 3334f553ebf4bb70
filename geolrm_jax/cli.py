"""The ``geolrm-jax`` command line: one subcommand per job, each in its own module.

Each subcommand's module exposes ``main(argv) -> int`` and parses its own arguments, so
``geolrm-jax train --help`` shows the trainer's flags. Imports are lazy: ``geolrm-jax cameras`` does not pay for
loading the model or the data pipeline.
"""

from __future__ import annotations

import argparse
import sys

MAX_CAMERA_SIZE = 8192


def _cameras(argv: list[str]) -> int:
    """Print a camera preset and summarize the rays / Plücker embedding the model would see."""
    parser = argparse.ArgumentParser(prog="geolrm-jax cameras", description=_cameras.__doc__)
    parser.add_argument("--preset", choices=["sv3d", "zero123pp"], default="zero123pp")
    parser.add_argument("--size", type=int, default=448, help="input image size in pixels (square)")
    parser.add_argument("--out", help="optional .npz to write c2w, K and the (V, H, W, 6) Plücker rays to "
                        "(missing folders are created)")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out this command wrote")
    args = parser.parse_args(argv)

    from geolrm_jax import io_atomic

    return io_atomic.run_command("geolrm-jax cameras", lambda: _cameras_run(args))


def rays_file_problem(path) -> str | None:
    """None when ``path`` is an .npz this command wrote (exactly c2w, K, plucker), else what it is instead."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files)
    except Exception as err:  # not an npz at all
        return f"not an .npz written by this command ({type(err).__name__})"
    return None if names == ["K", "c2w", "plucker"] else f"it holds arrays {names[:4]}"


def _cameras_run(args) -> int:
    import numpy as np

    from geolrm_jax import geometry, io_atomic

    if not 1 <= args.size <= MAX_CAMERA_SIZE:
        raise ValueError(f"--size {args.size}: must be in 1..{MAX_CAMERA_SIZE} pixels")
    out = None
    if args.out:
        out = args.out if args.out.endswith(".npz") else args.out + ".npz"  # as numpy.savez names it
        io_atomic.check_destination(out, overwrite=args.overwrite, owned=rays_file_problem, folder=False)
    preset = geometry.CAMERA_PRESETS[args.preset]()
    c2w, K = np.asarray(preset.c2w), np.asarray(preset.K)
    geometry.validate_cameras(c2w, K, source=f"preset {args.preset}")
    rays = np.asarray(geometry.plucker_embedding(c2w, K, args.size, args.size))
    centre_uv = np.asarray(geometry.project_points(np.zeros((1, 3)), c2w, K))[:, 0]
    fov = np.degrees(2 * np.arctan(0.5 / K[:, 1, 1]))
    print(f"preset {args.preset}: {len(c2w)} views, {args.size}x{args.size} px, Plücker rays {rays.shape}")
    print(f"{'view':>4} {'azimuth':>8} {'elev':>6} {'radius':>6} {'fov':>6}  {'origin->uv':>14}  |d| centre")
    for v, m in enumerate(c2w):
        pos = m[:3, 3]
        radius = np.linalg.norm(pos)
        az = np.degrees(np.arctan2(pos[1], pos[0])) % 360
        el = np.degrees(np.arcsin(pos[2] / radius))
        d = rays[v, args.size // 2, args.size // 2, :3]
        print(
            f"{v:>4} {az:8.1f} {el:6.1f} {radius:6.2f} {fov[v]:6.1f}  ({centre_uv[v, 0]:.3f}, {centre_uv[v, 1]:.3f})"
            f"  {np.linalg.norm(d):.4f}"
        )
    if out is not None:
        with io_atomic.staged_output(out, folder=False) as tmp, open(tmp, "wb") as f:
            np.savez(f, c2w=c2w, K=K, plucker=rays)
        print(f"wrote {out}")
    return 0


def _convert(argv: list[str]) -> int:
    from geolrm_jax.model import convert

    return convert.main(argv)


def _train(argv: list[str]) -> int:
    from geolrm_jax.train import main as train_main

    return train_main.main(argv)


def _sweep(argv: list[str]) -> int:
    from geolrm_jax.train import sweep

    return sweep.main(argv)


def _reconstruct(argv: list[str]) -> int:
    from geolrm_jax import reconstruct

    return reconstruct.main(argv)


def _evaluate(argv: list[str]) -> int:
    from geolrm_jax import evaluate

    return evaluate.main(argv)


def _bench(argv: list[str]) -> int:
    from geolrm_jax import benchmark

    return benchmark.main(argv)


def _data(argv: list[str]) -> int:
    """``data render`` (meshes -> GObjaverse layout) and ``data build`` (layout -> TFDS dataset)."""
    if argv and argv[0] == "render":
        from geolrm_jax.data import render_meshes

        return render_meshes.main(argv[1:])
    if argv and argv[0] == "build":
        from geolrm_jax.data import gobjaverse

        return gobjaverse.main(argv[1:])
    print("usage: geolrm-jax data {render,build} ...\n  render  meshes (.glb/.obj/.ply, folders) -> GObjaverse "
          "layout (Mitsuba 3)\n  build   GObjaverse layout -> TFDS dataset for training", file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2


def _demo(argv: list[str]) -> int:
    from geolrm_jax import demo_app

    return demo_app.main(argv)


COMMANDS = {
    "cameras": (_cameras, "camera presets and the ray embedding the model sees"),
    "convert": (_convert, "convert a released PyTorch checkpoint (.ckpt/.pt/.safetensors) to Orbax"),
    "train": (_train, "train stage 1 (occupancy) or stage 2 (rendering): --config, --workdir"),
    "sweep": (_sweep, "expand a sweep config (get_hyper) into train runs; --launch runs them"),
    "reconstruct": (_reconstruct, "posed images -> Gaussians (.ply, .splat) and a turntable video"),
    "eval": (_evaluate, "PSNR/SSIM/LPIPS and Chamfer/F-score over a dataset split"),
    "bench": (_bench, "inference time and peak memory per stage"),
    "data": (_data, "render meshes into the GObjaverse layout (data render); build the TFDS dataset (data build)"),
    "demo": (_demo, "web demo (Gradio) on 127.0.0.1: upload views, get Gaussians, a video and a mesh"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: geolrm-jax COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ngeolrm-jax: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    command, _ = COMMANDS[argv[0]]
    return int(command(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
