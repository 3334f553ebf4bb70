"""Input pipeline throughput (examples/s) for several worker counts, side by side.

    python tools/bench/input_pipeline.py --data-dir <built dataset dir> --workers 0 1 2 --batch-size 4
    python tools/bench/input_pipeline.py            # builds (once) 8 synthetic objects at 128 px under /tmp

Each row: an iterator is created, ``--warmup`` batches are drawn (worker start-up, first reads), then
``--batches`` batches are timed. The ratio column is relative to the first worker count given.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def _default_data_dir() -> str:
    from geolrm_jax.data import gobjaverse

    return gobjaverse.build_synthetic("/tmp/geolrm_bench_input", num_workers=os.cpu_count() or 1,
                                      num_objects=8, validation_objects=1, image_size=128, grid_size=128)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="built dataset directory (default: a small synthetic set)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=448)
    parser.add_argument("--render-size", type=int, default=448)
    parser.add_argument("--grid-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from geolrm_jax.data import pipeline

    data_dir = args.data_dir or _default_data_dir()
    print(f"dataset: {data_dir}")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"batch {args.batch_size}, input {args.input_size} px, render {args.render_size} px, "
          f"grid {args.grid_size}, {args.batches} timed batches after {args.warmup} warm-up")
    print(f"{'workers':>8} {'examples/s':>11} {'ms/example':>11} {'ratio':>6}")
    base = None
    for workers in args.workers:
        cfg = pipeline.default_data_config()
        cfg.data_dir = data_dir
        cfg.input_size, cfg.render_size, cfg.grid_size = args.input_size, args.render_size, args.grid_size
        cfg.num_workers = workers
        it = pipeline.make_iterator(cfg, args.split, seed=0, batch_size=args.batch_size, process_index=0,
                                    process_count=1)
        for _ in range(args.warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        elapsed = time.perf_counter() - start
        it.close()
        rate = args.batches * args.batch_size / elapsed
        base = base or rate
        print(f"{workers:>8} {rate:>11.2f} {1000 / rate:>11.1f} {rate / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
