"""``geolrm-jax data``: datasets in the GObjaverse layout and the TFDS dataset training reads.

    geolrm-jax data render MESHES... OUT        meshes (.glb/.obj/.ply, folders) -> GObjaverse layout (Mitsuba 3)
    geolrm-jax data build ...                   GObjaverse layout -> TFDS dataset for training
    geolrm-jax data synthetic --data-dir DIR    procedural objects -> layout -> TFDS dataset, in one go
    geolrm-jax data eval-set ROOT               held-out procedural objects for ``geolrm-jax eval``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

HELP = "datasets: render meshes (render), build the TFDS dataset (build), procedural sets (synthetic, eval-set)"


def render(argv: list[str]) -> int:
    from geolrm_jax.data import render_meshes

    return render_meshes.main(argv)


def build(argv: list[str]) -> int:
    from geolrm_jax.data import gobjaverse

    return gobjaverse.main(argv)


def synthetic(argv: list[str]) -> int:
    """Generate the procedural object set in the GObjaverse layout and build the ``synthetic_objects`` TFDS
    dataset (prints its directory: put it in the data config, ``data.data_dir``); ``--sample`` writes a
    6-view procedural sample instead (the bundled one is made by tools/make_sample.py)."""
    parser = argparse.ArgumentParser(prog="geolrm-jax data synthetic", description=synthetic.__doc__)
    parser.add_argument("--data-dir", help="TFDS data dir (the layout goes to <data-dir>/synthetic_objects_render)")
    parser.add_argument("--render-dir", help="where to write the GObjaverse layout (default: under --data-dir)")
    parser.add_argument("--num-objects", type=int, default=64)
    parser.add_argument("--validation-objects", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--grid-size", type=int, default=128)
    parser.add_argument("--supersample", type=int, default=2, help="RGBA samples per pixel side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sample", help="instead, write a 6-view procedural sample (PNGs + cameras.json) here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    start = time.perf_counter()
    if args.sample:
        from geolrm_jax.data import synthetic as synthetic_data

        path = synthetic_data.write_sample(args.sample, seed=args.seed, size=args.image_size)
        print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
        return 0
    if not args.data_dir:
        parser.error("--data-dir is required (or --sample)")
    from geolrm_jax.data import gobjaverse

    if args.validation_objects >= args.num_objects:
        parser.error("--validation-objects must be smaller than --num-objects")
    data_dir = gobjaverse.build_synthetic(
        args.data_dir, num_workers=args.workers, render_dir=args.render_dir, num_objects=args.num_objects,
        image_size=args.image_size, grid_size=args.grid_size, validation_objects=args.validation_objects,
        seed=args.seed, supersample=args.supersample)
    print(f"built {data_dir} in {time.perf_counter() - start:.1f} s")
    return 0


def eval_set(argv: list[str]) -> int:
    """Write held-out procedural objects (stream 2, never drawn in training) for ``geolrm-jax eval``: N objects
    per family (convex, concave, thin) in the GObjaverse layout, 40 views each, ``object.json`` naming the family,
    ``object_list.json`` = {"validation": [...]} (``geolrm_jax.data.eval_set``). Rendering runs on the default
    JAX device. Re-running with the same arguments keeps the objects already written."""
    from geolrm_jax.data import procedural

    parser = argparse.ArgumentParser(prog="geolrm-jax data eval-set", description=eval_set.__doc__)
    parser.add_argument("root", help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objects-per-family", type=int, default=16)
    parser.add_argument("--families", nargs="+", choices=procedural.FAMILIES, default=list(procedural.FAMILIES))
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--supersample", type=int, default=2, help="rays per pixel side")
    parser.add_argument("--steps", type=int, default=96, help="sphere-tracing steps")
    parser.add_argument("--views-per-call", type=int, default=8, help="views rendered per device call")
    args = parser.parse_args(argv)
    for name in ("objects_per_family", "image_size", "supersample", "steps", "views_per_call"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    import jax

    from geolrm_jax.data import eval_set as eval_set_module
    from geolrm_jax.data import gobjaverse_io

    start = time.perf_counter()
    last = [start]

    def progress(name, written):
        now = time.perf_counter()
        print(f"{name}: {'written' if written else 'kept (already there)'} in {now - last[0]:.2f} s", flush=True)
        last[0] = now

    print(f"rendering on {jax.devices()[0].device_kind}")
    try:
        path = eval_set_module.write_eval_set(args.root, args.seed, args.objects_per_family, tuple(args.families),
                                       args.image_size, args.supersample, args.steps, args.views_per_call,
                                       progress=progress)
    except gobjaverse_io.BadInputError as err:
        print(f"geolrm-jax data eval-set: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


SUBCOMMANDS = {"render": render, "build": build, "synthetic": synthetic, "eval-set": eval_set}


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    print("usage: geolrm-jax data {render,build,synthetic,eval-set} ...\n"
          "  render     meshes (.glb/.obj/.ply, folders) -> GObjaverse layout (Mitsuba 3)\n"
          "  build      GObjaverse layout -> TFDS dataset for training\n"
          "  synthetic  procedural objects -> GObjaverse layout -> TFDS dataset\n"
          "  eval-set   held-out procedural objects for geolrm-jax eval", file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
