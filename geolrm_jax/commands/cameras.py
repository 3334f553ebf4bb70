"""``geolrm-jax cameras``: print a camera preset and summarize the rays / Plücker embedding the model would see."""

from __future__ import annotations

import argparse

HELP = "camera presets and the ray embedding the model sees"
MAX_CAMERA_SIZE = 8192


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="geolrm-jax cameras", description=HELP)
    parser.add_argument("--preset", choices=["sv3d", "zero123pp"], default="zero123pp")
    parser.add_argument("--size", type=int, default=448, help="input image size in pixels (square)")
    parser.add_argument("--out", help="optional .npz to write c2w, K and the (V, H, W, 6) Plücker rays to "
                        "(missing folders are created)")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out this command wrote")
    args = parser.parse_args(argv)

    from geolrm_jax import io_atomic

    return io_atomic.run_command("geolrm-jax cameras", lambda: _run(args))


def rays_file_problem(path) -> str | None:
    """None when ``path`` is an .npz this command wrote (exactly c2w, K, plucker), else what it is instead."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files)
    except Exception as err:  # not an npz at all
        return f"not an .npz written by this command ({type(err).__name__})"
    return None if names == ["K", "c2w", "plucker"] else f"it holds arrays {names[:4]}"


def _run(args) -> int:
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
