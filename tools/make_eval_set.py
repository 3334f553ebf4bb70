"""Write held-out procedural objects (stream 2, never drawn in training) for ``geolrm-jax eval``.

    python tools/make_eval_set.py evalset/ --seed 0 --objects-per-family 16 --image-size 512
    geolrm-jax eval evalset/ --num-views 6 --method model visual_hull --input-size 256 --render-size 256

N objects per family (convex, concave, thin) in the GObjaverse layout, 40 views each, ``object.json`` naming
the family, ``object_list.json`` = {"validation": [...]}: see ``geolrm_jax/data/eval_set.py``. Rendering runs
on the default JAX device (a GPU when there is one). Re-running with the same arguments keeps the objects
already written.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    from geolrm_jax.data import procedural

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    from geolrm_jax.data import eval_set, gobjaverse_io

    start = time.perf_counter()
    last = [start]

    def progress(name, written):
        now = time.perf_counter()
        print(f"{name}: {'written' if written else 'kept (already there)'} in {now - last[0]:.2f} s", flush=True)
        last[0] = now

    print(f"rendering on {jax.devices()[0].device_kind}")
    try:
        path = eval_set.write_eval_set(args.root, args.seed, args.objects_per_family, tuple(args.families),
                                       args.image_size, args.supersample, args.steps, args.views_per_call,
                                       progress=progress)
    except gobjaverse_io.BadInputError as err:
        print(f"make_eval_set: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
