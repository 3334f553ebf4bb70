"""Every JAX transform through the deformable op, the splatter and the tiny model on the GPU's Pallas kernels,
against the XLA implementation, and what each transform costs.

    python tools/check_transforms.py [--out DIR]      # GPU; writes DIR/check_transforms.json ($OUT by default)
    python tools/check_transforms.py --tiny            # smoke test of this script (CPU: pallas_interpret)

For each target (deformable op at B=1, V=6, Q=4096, H=8, C=32, 64²+32², 4 points; render of 20k Gaussians into
2 cameras of 128²; the tiny model's reconstruction network) it runs jvp, linearize (+ transpose), jacfwd (+
jacrev; with respect to a global shift of the points / Gaussians, or the model's cameras), vjp, grad of grad,
Hessian-vector product and jit(vmap(grad)) (tests/transform_checks.all_transforms) with implementation "pallas"
and "xla", and reports the largest relative difference per transform (fails above 1e-4 in float32: the Pallas
gradients add with atomics in another order), then times (median of --reps, after compilation)
value_and_grad, jvp and the HVP of each implementation. Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import transform_checks as tc  # noqa: E402

TOLERANCE = 1e-4


def deformable_target(tiny):
    from geolrm_kernels.deformable import deformable_sample

    b, v, q, heads, c, points = (1, 2, 16, 2, 8, 2) if tiny else (1, 6, 4096, 8, 32, 4)
    shapes = ((8, 8), (4, 4)) if tiny else ((64, 64), (32, 32))
    rng = np.random.default_rng(0)
    length = sum(h * w for h, w in shapes)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    logits = rng.standard_normal((b, q, heads, len(shapes) * points))
    weights = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(b, q, heads, len(shapes), points)
    xs = (f32(rng.standard_normal((b, v, length, heads, c))), f32(rng.uniform(0.05, 0.95, (b, v, q, 2))),
          f32(rng.normal(0, 0.02, (b, q, heads, len(shapes), points, 2))), f32(weights), jnp.zeros(2))

    def make(implementation):  # shift (2,): moves every reference point (the Jacobian's input: 2 columns)
        def f(value, reference_points, offsets, weights, shift):
            return deformable_sample(value, reference_points + shift, offsets, weights, shapes,
                                     implementation=implementation)
        return f

    return make, xs, 4


def splatter_target(tiny):
    from geolrm_jax.geometry import fov_to_intrinsics, orbit_c2w
    from geolrm_jax.render.gaussians import Gaussians
    from geolrm_jax.render.splat import default_capacity, render

    num, size = (100, 24) if tiny else (20000, 128)
    rng = np.random.default_rng(1)
    quats = rng.normal(size=(num, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    scales, quats = f32(rng.uniform(0.005, 0.03, (num, 3))), f32(quats)
    c2w = orbit_c2w(2, 20.0, 1.5)[None]
    k = jnp.broadcast_to(fov_to_intrinsics(39.6), (1, 2, 3, 3))
    capacity = 4 * default_capacity(num, size, size)

    def make(implementation):  # shift (3,): moves every Gaussian (the Jacobian's input: 3 columns)
        def f(means, opacities, rgbs, shift):
            g = Gaussians((means + shift)[None], scales[None], quats[None], opacities[None], rgbs[None])
            out = render(g, c2w, k, size, size, jnp.ones(3), capacity=capacity, implementation=implementation)
            return out.rgb, out.alpha, out.depth
        return f

    xs = (f32(rng.uniform(-0.4, 0.4, (num, 3))), f32(rng.uniform(0.3, 0.95, num)), f32(rng.uniform(0, 1, (num, 3))),
          jnp.zeros(3))
    return make, xs, 3


def model_target(tiny):
    del tiny
    from geolrm_jax import geometry
    from geolrm_jax.model import config as model_config
    from geolrm_jax.model.geolrm import GeoLRM, init_variables

    views = 2
    images = jax.random.uniform(jax.random.key(2), (1, views, 28, 28, 3))
    c2ws = geometry.orbit_c2w(views, 20.0, 1.5)[None]
    ks = jnp.broadcast_to(geometry.fov_to_intrinsics(39.6), (1, views, 3, 3))
    mask = jnp.ones((1, views), bool)
    anchors = jax.random.uniform(jax.random.key(3), (1, 16, 3), minval=-0.4, maxval=0.4)

    def make(implementation):
        config = model_config.tiny_model_config()
        config.sample_impl = implementation
        model = GeoLRM(config)
        variables = init_variables(config, jax.random.key(0))
        return lambda im, c: model.apply(variables, im, c, ks, mask, anchors, jnp.ones((1, 16), bool),
                                         method=model.reconstruct)

    return make, (images, c2ws), 1


TARGETS = {"deformable_op": deformable_target, "splatter": splatter_target, "model": model_target}


def timed(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def check(name, make, xs, jac_argnum, kernels, reps):
    us = tc.random_like(jax.random.key(4), xs, 0.01)
    other = tuple(x + u for x, u in zip(xs, tc.random_like(jax.random.key(5), xs, 0.01), strict=True))
    results = {impl: tc.run(lambda x, u, o, impl=impl: tc.all_transforms(make(impl), x, u, o, jac_argnum=jac_argnum,
                                                                          with_jvp=True), xs, us, other)
               for impl in (kernels, "xla")}
    row = {"target": name, "implementation": kernels, "errors": {}, "ms": {}}
    for transform in tc.TRANSFORMS:
        row["errors"][transform] = tc.rel_err(results[kernels][transform], results["xla"][transform])
    argnums = tuple(range(len(xs)))
    for impl in (kernels, "xla"):
        f = make(impl)
        loss = lambda *x, f=f: tc.scalar_loss(f(*x))
        row["ms"][impl] = {
            "value_and_grad": timed(jax.jit(jax.value_and_grad(loss, argnums=argnums)), *xs, reps=reps),
            "jvp": timed(jax.jit(lambda x, u, f=f: jax.jvp(f, x, u)), xs, us, reps=reps),
            "hvp": timed(jax.jit(lambda x, u, loss=loss: jax.jvp(jax.grad(loss, argnums=argnums), x, u)[1]), xs, us,
                         reps=reps),
        }
    row["ok"] = all(err <= TOLERANCE for err in row["errors"].values())
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for check_transforms.json")
    parser.add_argument("--tiny", action="store_true", help="small shapes and pallas_interpret (CPU smoke test)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    kernels = "pallas_interpret" if args.tiny else "pallas"
    rows = []
    for name in args.targets.split(","):
        make, xs, jac_argnum = TARGETS[name](args.tiny)
        row = check(name, make, xs, jac_argnum, kernels, 1 if args.tiny else args.reps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "rows": rows}
    path = pathlib.Path(args.out) / "check_transforms.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    ok = all(row["ok"] for row in rows)
    print(f"{'all transforms within' if ok else 'FAILED: a transform beyond'} rel. {TOLERANCE}; wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
