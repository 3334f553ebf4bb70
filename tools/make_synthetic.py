"""Generate the procedural object set in the GObjaverse layout and build the ``synthetic_objects`` TFDS dataset.

    python tools/make_synthetic.py --data-dir data/tfds                      # 64 objects at 128 px
    python tools/make_synthetic.py --data-dir /tmp/t --num-objects 3 --image-size 32 --grid-size 32
    python tools/make_synthetic.py --sample /tmp/sample       # a 6-view procedural sample (bundled: make_sample.py)

Prints the built dataset directory: put it in the data config (``data.data_dir``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        from geolrm_jax.data import synthetic

        path = synthetic.write_sample(args.sample, seed=args.seed, size=args.image_size)
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


if __name__ == "__main__":
    sys.exit(main())
