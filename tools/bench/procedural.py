"""Throughput of the procedural training data (geolrm_jax/data/procedural_pipeline.py) on the default device.

    python tools/bench/procedural.py --batch-size 16 --batches 5 [--set input_size=256 --set supersample=2]

Prints examples/s for sampling (numpy, host) and rendering (JAX, device) separately and together, as JSON.
"""
import argparse
import json
import time

import jax
import numpy as np

from geolrm_jax.data import procedural_pipeline as pp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of default_procedural_config()")
    args = parser.parse_args(argv)
    config = pp.default_procedural_config()
    config.grid_size = 32  # the demo model's
    for item in args.set:
        key, value = item.split("=", 1)
        config[key] = type(config[key])(value)
    it = pp.ProceduralIterator(config, "train", seed=0, batch_size=args.batch_size)
    t0 = time.perf_counter()
    jax.block_until_ready(next(it))
    compile_s = time.perf_counter() - t0
    sample_s = render_s = 0.0
    for b in range(args.batches):
        t0 = time.perf_counter()
        examples = [pp.sample_example(config, 0, 0, 10_000 + b * args.batch_size + i, True)
                    for i in range(args.batch_size)]
        stacked = pp.stack_examples(examples)
        t1 = time.perf_counter()
        out = pp.render_batch(stacked, input_size=config.input_size, render_size=config.render_size,
                              grid_size=config.grid_size, supersample=config.supersample, steps=config.steps,
                              input_supersample=config.input_supersample)
        jax.tree.map(np.asarray, out)
        t2 = time.perf_counter()
        sample_s += t1 - t0
        render_s += t2 - t1
    n = args.batches * args.batch_size
    row = {"device": jax.devices()[0].device_kind, "batch_size": args.batch_size, "config": config.to_dict(),
           "first_batch_s": round(compile_s, 2), "sample_examples_per_s": round(n / sample_s, 1),
           "render_examples_per_s": round(n / render_s, 1), "examples_per_s": round(n / (sample_s + render_s), 1)}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
