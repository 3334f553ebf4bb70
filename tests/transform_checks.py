"""Shared pieces of the transform matrix (tests/test_transforms_*.py).

A target is a function ``f(*xs) -> output pytree`` of float inputs ``xs``. :func:`all_transforms` computes every
transform of it in one traced function (one compile per implementation: compiles dominate these tests), which
the tests compare with the same function of an autodiff-only reference; ``scalar_loss`` maps an output to a
scalar with nonzero second derivatives, so Hessians are not just the second derivatives of ``f``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TRANSFORMS = ("jvp", "linearize", "jacfwd", "vjp", "grad_of_grad", "hvp", "vmap_of_grad")


def naive_deformable_sample(value, reference_points, offsets, attention_weights, spatial_shapes, view_mask=None,
                            query_mask=None, **_):
    """The contract of geolrm_kernels.deformable with every sample materialized by integer gathers (the four
    corners stacked on an axis) and derivatives by plain autodiff: the independent reference."""
    b, v, _, heads, c = value.shape
    q = reference_points.shape[2]
    bi, vi, hi = (jnp.arange(n).reshape(shape) for n, shape in ((b, (b, 1, 1, 1, 1, 1)), (v, (1, v, 1, 1, 1, 1)),
                                                                (heads, (1, 1, 1, heads, 1, 1))))
    corner_x, corner_y = jnp.asarray([0.0, 1.0, 0.0, 1.0]), jnp.asarray([0.0, 0.0, 1.0, 1.0])
    out, start = 0.0, 0
    for level, (h, w) in enumerate(spatial_shapes):
        level_map = value[:, :, start:start + h * w].reshape(b, v, h, w, heads, c)
        start += h * w
        loc = reference_points[:, :, :, None, None, :] + offsets[:, None, :, :, level]  # (B, V, Q, H, P, 2)
        x, y = loc[..., 0] * w - 0.5, loc[..., 1] * h - 0.5
        x0, y0 = jnp.floor(x), jnp.floor(y)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        xi, yi = x0[..., None] + corner_x, y0[..., None] + corner_y  # (B, V, Q, H, P, 4)
        weight = jnp.where(corner_x == 1, fx, 1 - fx) * jnp.where(corner_y == 1, fy, 1 - fy)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        xc, yc = (jnp.clip(i, 0, n - 1).astype(jnp.int32) for i, n in ((xi, w), (yi, h)))
        sample = level_map[bi, vi, yc, xc, hi]  # (B, V, Q, H, P, 4, C)
        coef = jnp.where(inside, weight, 0.0) * attention_weights[:, None, :, :, level, :, None]
        out = out + jnp.sum(coef[..., None] * sample.astype(coef.dtype), axis=(4, 5))
    mask = jnp.ones((b, v, q), bool)
    if view_mask is not None:
        mask &= view_mask[:, :, None]
    if query_mask is not None:
        mask &= query_mask[:, None, :]
    return jnp.where(mask[..., None, None], out, 0.0).astype(value.dtype)


def run(fn, *args):
    """fn(*args) jitted with XLA's backend optimizations off: these programs run once, their compile dominates."""
    lowered = jax.jit(fn).lower(*args)
    try:
        compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    except Exception:  # an XLA without this option
        compiled = lowered.compile()
    return compiled(*args)


def rel_err(got, want):
    """max |got - want| / max |want| over all leaves (NaN or inf in ``got`` fail)."""
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    num = den = 0.0
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, (g.shape, w.shape)
        assert np.all(np.isfinite(g)), "non-finite values"
        num, den = max(num, float(np.max(np.abs(g - w), initial=0.0))), max(den, float(np.max(np.abs(w), initial=0.0)))
    assert den > 0, "the reference is identically zero: the check could not fail"
    return num / den


def random_like(key, tree, scale=1.0):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves,
                                                                                                        strict=True)])


def central_difference(f, xs, us, eps):
    """(f(xs + eps us) - f(xs - eps us)) / (2 eps), leafwise over the output pytree."""
    plus = f(*(x + eps * u for x, u in zip(xs, us, strict=True)))
    minus = f(*(x - eps * u for x, u in zip(xs, us, strict=True)))
    return jax.tree.map(lambda a, b: (a - b) / (2 * eps), plus, minus)


def pattern(shape, dtype, phase=0.0):
    """A fixed, varied, sign-changing array (cos of a scrambled index): weights that cost nothing to compile,
    unlike jax.random inside the differentiated functions."""
    index = jnp.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    return jnp.cos(0.77 * index + phase) * (1.0 + 0.5 * jnp.sin(0.13 * index))


def scalar_loss(out):
    """sum(w * sin(3 out)) with fixed weights w per leaf: nonlinear in the output."""
    return sum(jnp.sum(pattern(x.shape, x.dtype, i) * jnp.sin(3.0 * x)) for i, x in enumerate(jax.tree.leaves(out)))


def summary(out, rows=6):
    """A few (rows) fixed linear combinations of all outputs: a small output for Jacobians."""
    flat = jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(out)])
    return pattern((rows, flat.shape[0]), flat.dtype, 2.0) @ flat


def grad_of(f, argnums):
    return jax.grad(lambda *xs: scalar_loss(f(*xs)), argnums=argnums)


def jvp(f, xs, us):
    return run(lambda xs, us: jax.jvp(f, xs, us), tuple(xs), tuple(us))


def scalar_cotangent(out):
    return jax.tree.map(lambda x: pattern(x.shape, x.dtype, 1.0), out)


def all_transforms(f, xs, us, other, *, jac_argnum, with_jvp=False):
    """Every transform of TRANSFORMS but jvp (unless ``with_jvp``: (value, tangent)), of f at xs (tangents us;
    ``other``: a second example for the per-example gradients), in one traced function:

    linearize: (tangent of jax.linearize at us, its jax.linear_transpose at a fixed cotangent);
    jacfwd: (jacfwd, jacrev) of a few fixed linear combinations of the outputs w.r.t. xs[jac_argnum];
    vjp: the pullback of the fixed cotangent; grad_of_grad: gradient of ||grad loss||^2;
    hvp: jvp of grad loss along us; vmap_of_grad: (vmap(grad loss) over [xs, other], the two grads one by one).
    """
    argnums = tuple(range(len(xs)))
    out, lin = jax.linearize(f, *xs)
    cotangent = scalar_cotangent(out)
    extra = {"jvp": jax.jvp(f, tuple(xs), tuple(us))} if with_jvp else {}

    def summarized(x):
        return summary(f(*xs[:jac_argnum], x, *xs[jac_argnum + 1:]))

    grad = grad_of(f, argnums)
    pair = tuple(jnp.stack([x, y]) for x, y in zip(xs, other, strict=True))
    return extra | {
        "linearize": (lin(*us), jax.linear_transpose(lin, *xs)(cotangent)),
        "jacfwd": (jax.jacfwd(summarized)(xs[jac_argnum]), jax.jacrev(summarized)(xs[jac_argnum])),
        "vjp": jax.vjp(f, *xs)[1](cotangent),
        "grad_of_grad": jax.grad(lambda *x: sum(jnp.sum(g * g) for g in grad(*x)), argnums=argnums)(*xs),
        "hvp": jax.jvp(grad, tuple(xs), tuple(us))[1],
        "vmap_of_grad": (jax.vmap(grad)(*pair), jax.tree.map(lambda *g: jnp.stack(g), grad(*xs), grad(*other))),
    }
