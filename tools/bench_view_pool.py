"""Cross-view softmax pooling (``geolrm_kernels.view_softmax_pool``): Pallas kernel vs the XLA reference.

    python tools/bench_view_pool.py [--views 6 21] [--anchors 8192] [--dim 768] [--dtype bfloat16] [--repeats 20]
        [--configs 8:4:unroll 2:2:loop ...] [--out results.json]

Candidates: the XLA ops the cross-attention used before the kernel ("model ops": nn.Dense(1) logits in the
compute dtype), the float32-logit reference, and the kernel at each --configs setting. Forward time (median of
``--repeats`` synchronized calls after a warm-up), achieved bandwidth (compulsory bytes: x read once, the
output written once) and the error against the float32 reference, side by side with ratios to the first.
The shapes are the reconstruction transformer's: x = the per-view sampled features (1, V, S, D).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def timed(fn, args, repeats):
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, nargs="+", default=[6, 21])
    p.add_argument("--anchors", type=int, default=8192)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--configs", nargs="+", default=["8:4:unroll"],
                   help="kernel settings BLOCK_S:NUM_WARPS:unroll|loop (the view loop unrolled or not)")
    p.add_argument("--out")
    args = p.parse_args(argv)

    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from geolrm_kernels import view_softmax_pool as vp

    dtype = jnp.dtype(args.dtype)

    def model_ops(x, w, bias, mask):
        """What the cross-attention ran before: nn.Dense(1) in the compute dtype, masked softmax, einsum."""
        logits = (jnp.dot(x, w[:, None])[..., 0]).astype(jnp.float32) + bias
        weights = jax.nn.softmax(jnp.where(mask[:, :, None], logits, -1e30), axis=1)
        return jnp.einsum("bvs,bvsd->bsd", weights, x.astype(jnp.float32)).astype(x.dtype)
    print(f"device: {jax.local_devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"S={args.anchors}, D={args.dim}, {args.dtype}, median of {args.repeats}")
    on_gpu = jax.default_backend() == "gpu"
    rows = []
    for views in args.views:
        rng = np.random.default_rng(views)
        x = jnp.asarray(rng.standard_normal((1, views, args.anchors, args.dim)), dtype)
        w = jnp.asarray(rng.standard_normal(args.dim) / np.sqrt(args.dim), dtype)
        bias = jnp.float32(0.1)
        mask = jnp.ones((1, views), bool)
        want = np.asarray(vp.view_softmax_pool_reference(x.astype(jnp.float32), w.astype(jnp.float32), bias, mask))
        nbytes = x.size * x.dtype.itemsize + x.size // views * x.dtype.itemsize
        candidates = [("xla (model ops)", jax.jit(model_ops)),
                      ("xla (reference)", jax.jit(vp.view_softmax_pool_reference))]
        for config in args.configs if on_gpu else []:
            block_s, warps, loop = config.split(":")
            candidates.append((f"pallas {config}", jax.jit(functools.partial(
                vp.view_softmax_pool_pallas, block_s=int(block_s), num_warps=int(warps), unroll=loop == "unroll"))))
        base = None
        for name, fn in candidates:
            seconds = timed(fn, (x, w, bias, mask), args.repeats)
            err = float(np.abs(np.asarray(fn(x, w, bias, mask), np.float32) - want).max() / np.abs(want).max())
            base = base or seconds
            rows.append({"views": views, "implementation": name, "ms": 1e3 * seconds, "xla_over_this": base / seconds,
                         "GB_per_s": nbytes / seconds / 1e9, "max_rel_err": err})
    print(f"{'views':>5} {'implementation':>22} | {'ms':>7} {'XLA/this':>8} {'GB/s':>7} {'max rel err':>11}")
    for r in rows:
        print(f"{r['views']:>5} {r['implementation']:>22} | {r['ms']:>7.3f} {r['xla_over_this']:>8.2f} "
              f"{r['GB_per_s']:>7.0f} {r['max_rel_err']:>11.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
