"""The transform matrix on the two custom ops: every transform of transform_checks.TRANSFORMS through the deformable
op (all four inputs, one masked query) and through the splatter (render: projection, tile lists, rasterizer; with
respect to means, opacities and colours of 100 Gaussians seen by 2 cameras), with the XLA implementation and the
Pallas kernels run by the interpreter. Values are checked, not just that they run:

- jvp: against central finite differences of the float64 op (jax_enable_x64, eps 1e-6: the sample points
  sit away from the kinks of bilinear interpolation, the splatter's thresholds are not crossed), rel. 1e-6;
- linearize: the tangent and the transpose of the linear map (jax.linear_transpose) against the reference's jvp
  and VJP;
- jacfwd: against the reference's jacfwd and the op's own jacrev (forward and reverse rules are separate code);
- vjp, grad of grad, Hessian-vector products (jvp of grad): against the same transforms of autodiff-only
  references (a naive gather sampler that materializes every sample; projection + the dense rasterizer),
  rel. 1e-4 (float32);
- vmap of grad: jit(vmap(grad)) over 2 examples equals a loop of grads, rel. 1e-5 (the splatter: 2 objects x 2
  cameras x 100 Gaussians, which crashed XLA:CPU before projection.small_matmul avoided a reduce).

Each implementation's transforms (and the reference's) are one compiled program; the splatter's cells are slow.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transform_checks as tc
from deformable_cases import LATTICE_SHAPES, lattice_inputs
from geolrm_kernels import rasterize
from geolrm_kernels.deformable import deformable_sample

from geolrm_jax.geometry import fov_to_intrinsics, orbit_c2w
from geolrm_jax.render import projection
from geolrm_jax.render.gaussians import Gaussians
from geolrm_jax.render.splat import _clamp01, render

IMPLEMENTATIONS = ("xla", "pallas_interpret")
QUERY_MASK = jnp.array([[True, True, False, True]])


# ------------------------------------------------------------------------------------------- deformable op
def deformable(implementation):
    return lambda *xs: deformable_sample(*xs, LATTICE_SHAPES, query_mask=QUERY_MASK, implementation=implementation)


def naive_deformable(*xs):
    return tc.naive_deformable_sample(*xs, LATTICE_SHAPES, query_mask=QUERY_MASK)


def deformable_case(seed=0):
    """(inputs, tangents): points away from kinks, one masked query (all views), C = 8, two levels."""
    xs = tuple(lattice_inputs(seed, v=2, q=4, heads=2, c=8, points=2))
    us = tc.random_like(jax.random.key(seed + 1), xs)
    return xs, us


# ------------------------------------------------------------------------------------------------ splatter
SIZE, NUM, CAPACITY = 24, 100, 1 << 12
BACKGROUND = jnp.asarray([0.2, 0.4, 0.6])


def splat_scene(seed, dtype=jnp.float32):
    """(means, scales, quats, opacities, rgbs, c2w): NUM Gaussians in the unit cube, 2 cameras on a circle."""
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(NUM, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    f = lambda x: jnp.asarray(x, dtype)
    c2w = orbit_c2w(2, 20.0, 1.5, start_azimuth_deg=float(rng.uniform(0, 90)))
    return (f(rng.uniform(-0.4, 0.4, (NUM, 3))), f(rng.uniform(0.03, 0.08, (NUM, 3))), f(quats),
            f(rng.uniform(0.3, 0.95, NUM)), f(rng.uniform(0, 1, (NUM, 3))), f(c2w))


def splatter(implementation):
    def f(means, opacities, rgbs):
        scales, quats, c2w = SCENE_FIXED
        g = Gaussians(means[None], scales[None], quats[None], opacities[None], rgbs[None])
        k = jnp.broadcast_to(fov_to_intrinsics(39.6).astype(means.dtype), (1, c2w.shape[0], 3, 3))
        out = render(g, c2w[None], k, SIZE, SIZE, BACKGROUND.astype(means.dtype), capacity=CAPACITY,
                     implementation=implementation)
        return out.rgb[0], out.alpha[0], out.depth[0]
    return f


def dense_splatter(means, opacities, rgbs):
    """Projection + the dense rasterizer (every Gaussian against every pixel, plain autodiff) per camera."""
    scales, quats, c2w = SCENE_FIXED

    def camera(c2w):
        k = fov_to_intrinsics(39.6).astype(means.dtype)
        proj = projection.project_gaussians(means, scales, quats, projection.camera_from_c2w(c2w, k), SIZE, SIZE)
        feats = rasterize.pack_features(proj.means2d, proj.conics, opacities, rgbs, proj.depths)
        color, alpha, depth, trans = rasterize.rasterize_dense_reference(feats, proj.radii, SIZE, SIZE)[:4]
        return _clamp01(color + trans[..., None] * BACKGROUND.astype(means.dtype)), alpha, depth
    return jax.vmap(camera)(c2w)


def splat_case(seed=3):
    """(means, opacities, rgbs) of a scene and tangents; scales, quaternions and the 2 cameras (SCENE_FIXED) are
    not differentiated here: their derivatives are plain JAX (projection), and the docs' examples take c2w's."""
    means, _, _, opacities, rgbs, _ = splat_scene(seed)
    xs = (means, opacities, rgbs)
    us = tc.random_like(jax.random.key(seed + 1), xs)
    return xs, tuple(u * scale for u, scale in zip(us, (0.01, 0.02, 0.1), strict=True))


SCENE_FIXED = tuple(splat_scene(3)[i] for i in (1, 2, 5))


# ------------------------------------------------------------------------------------------------ the matrix
TARGETS = {
    # name: (function of an implementation, autodiff reference, case, argnum of jacfwd, eps of the float64 FD)
    "deformable_op": (deformable, naive_deformable, deformable_case, 1, 1e-6),
    "splatter": (splatter, dense_splatter, splat_case, 1, 1e-6),
}


def _float64(tree):
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), tree)


@functools.cache
def results(target, implementation):
    """Every float32 transform of the target at its case, in one program per implementation ("reference": the
    autodiff reference); one program compiles far faster than one per transform."""
    make, reference, case, jac_argnum, _ = TARGETS[target]
    f = reference if implementation == "reference" else make(implementation)
    xs, us = case()
    other = case(seed=11)[0]
    return tc.run(functools.partial(tc.all_transforms, f, jac_argnum=jac_argnum), xs, us, other)


@functools.cache
def float64_jvp(target, implementation):
    """(value, tangent) of jax.jvp in float64, or for "finite_differences" the XLA op's value and central
    differences."""
    make, _, case, _, eps = TARGETS[target]
    with jax.enable_x64(True):
        xs, us = _float64(case())
        if implementation == "finite_differences":
            f64 = jax.jit(make("xla"))
            return f64(*xs), tc.central_difference(f64, xs, us, eps)
        return tc.jvp(make(implementation), xs, us)


# The splatter's programs (render under every transform, and the dense reference) take most of this file's
# time: slow, still run in CI.
MATRIX_TARGETS = ("deformable_op", pytest.param("splatter", marks=pytest.mark.slow))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("transform", tc.TRANSFORMS)
@pytest.mark.parametrize("target", MATRIX_TARGETS)
def test_transform(target, transform, implementation):
    if transform == "jvp":
        (value, tangent), (want_value, want) = (float64_jvp(target, implementation),
                                                float64_jvp(target, "finite_differences"))
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(tangent))
        assert tc.rel_err(tangent, want) <= 1e-6, tc.rel_err(tangent, want)
        assert tc.rel_err(value, want_value) <= 1e-6  # the Pallas primal runs in float32
        if target == "deformable_op":
            assert np.all(np.asarray(tangent)[:, :, 2] == 0)  # the masked query
        return
    got, want = results(target, implementation)[transform], results(target, "reference")[transform]
    if transform == "linearize":  # tangent and transposed map
        assert tc.rel_err(got[0], want[0]) <= 1e-4 and tc.rel_err(got[1], want[1]) <= 1e-4
    elif transform == "jacfwd":  # jacfwd (also against the op's own jacrev)
        assert tc.rel_err(got[0], want[0]) <= 1e-4 and tc.rel_err(got[0], got[1]) <= 1e-5
    elif transform == "vmap_of_grad":  # jit(vmap(grad)) against a loop of grads
        assert tc.rel_err(got[0], got[1]) <= 1e-5 and tc.rel_err(got[0], want[0]) <= 1e-4
    else:
        assert tc.rel_err(got, want) <= 1e-4


@pytest.mark.slow
def test_splatter_case_is_not_degenerate():
    """The cameras see the object (partly), and every differentiated input has a nonzero gradient."""
    xs, _ = splat_case()
    _, alpha, _ = jax.jit(splatter("xla"))(*xs)
    assert float(jnp.mean(alpha)) > 0.1 and float(jnp.min(alpha)) < 0.05
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in results("splatter", "reference")["vjp"])
    means, scales, quats, opacities, rgbs, c2w = splat_scene(3)
    out = jax.jit(render, static_argnums=(3, 4), static_argnames="capacity")(
        Gaussians(*(x[None] for x in (means, scales, quats, opacities, rgbs))), c2w[None],
        jnp.broadcast_to(fov_to_intrinsics(39.6), (1, 2, 3, 3)), SIZE, SIZE, BACKGROUND, capacity=CAPACITY)
    assert int(out.overflow) == 0


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_gradient_runs_only_the_primal_and_vjp_kernels(target):
    """value_and_grad (training) traces the primal F_0 and the VJP G_0 and nothing of higher order: the tangent
    map is transposed away, so training runs the same kernels as before the derivative rules; jvp adds F_1."""
    make, _, case, _, _ = TARGETS[target]
    xs, us = case()
    f = make("pallas")
    grad_jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda *x: tc.scalar_loss(f(*x)), argnums=(0, 1)))(*xs)
    name = {"deformable_op": "deformable_sample", "splatter": "splat_rasterize"}[target]
    assert _primitives(grad_jaxpr.jaxpr) == {(f"{name}_f", 0), (f"{name}_g", 0)}
    jvp_jaxpr = jax.make_jaxpr(lambda xs, us: jax.jvp(f, xs, us))(xs, us)
    assert _primitives(jvp_jaxpr.jaxpr) == {(f"{name}_f", 0), (f"{name}_f", 1)}


def _primitives(jaxpr):
    from jax.extend.core import jaxprs_in_params

    found = set()
    for eqn in jaxpr.eqns:
        if "family" in eqn.params:
            found.add((eqn.primitive.name, eqn.params["k"] if "k" in eqn.params else eqn.params["m"]))
        for sub in jaxprs_in_params(eqn.params):
            found |= _primitives(sub)
    return found
