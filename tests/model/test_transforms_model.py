"""The transform matrix through the model: every transform of transform_checks.TRANSFORMS of the tiny GeoLRM's
reconstruction network (images and cameras -> Gaussians, anchors given) with respect to the input images and
camera poses, with the deformable op on XLA and on the Pallas kernels (interpreter). The reference is the same
network with the op replaced by the naive gather sampler, differentiated by plain autodiff; tolerances as in
test_transforms_ops (float32: rel. 1e-4; jit(vmap(grad)) against a loop: 1e-5). The network computes in
float32 whatever its inputs, so its jvp is checked against the reference's and against float32 central
differences (rel. 3e-3 at eps 3e-3, about the float32 noise floor of the differences).

Slow: three programs with every transform through the network (two implementations and the reference).
"""
from __future__ import annotations

import contextlib
import functools

import geolrm_kernels.deformable.api as deformable_module
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transform_checks as tc
from test_model import random_variables, tiny_inputs

from geolrm_jax.model import config as model_config
from geolrm_jax.model.geolrm import GeoLRM

pytestmark = pytest.mark.slow
IMPLEMENTATIONS = ("xla", "pallas_interpret")


@functools.cache
def network(implementation):
    """f(images, c2ws) -> Gaussians of the tiny model's reconstruction network at fixed anchors (B = 1, V = 2)."""
    config = model_config.tiny_model_config()
    config.sample_impl = "xla" if implementation == "reference" else implementation
    model = GeoLRM(config)
    images, c2ws, ks, view_mask = tiny_inputs(batch=1, views=2)
    variables = random_variables(model, (images, c2ws, ks, view_mask))
    rng = np.random.default_rng(0)
    anchors = jnp.asarray(rng.uniform(-0.4, 0.4, (1, 8, 3)), jnp.float32)
    anchor_mask = jnp.ones((1, 8), bool).at[0, 7].set(False)

    def f(images, c2ws):
        return model.apply(variables, images, c2ws, ks, view_mask, anchors, anchor_mask, method=model.reconstruct)

    return f


@contextlib.contextmanager
def naive_sampler():
    """The model traces deformable_sample from its module at call time: trace the naive sampler instead."""
    original = deformable_module.deformable_sample
    deformable_module.deformable_sample = tc.naive_deformable_sample
    try:
        yield
    finally:
        deformable_module.deformable_sample = original


def case(seed=0):
    """(images, c2ws) of 2 views and tangents (images: noise; poses: a small change of rotation and position)."""
    images, c2ws, _, _ = tiny_inputs(batch=1, views=2, seed=seed)
    key_images, key_poses = jax.random.split(jax.random.key(seed + 1))
    pose_tangent = 0.02 * jax.random.normal(key_poses, c2ws.shape).at[..., 3, :].set(0.0)
    return (images, c2ws), (0.1 * jax.random.normal(key_images, images.shape), pose_tangent)


@functools.cache
def results(implementation):
    """All transforms (one program per implementation)."""
    xs, us = case()
    other = (case(seed=3)[0][0], xs[1] + 0.5 * case()[1][1])
    f = network(implementation)
    context = naive_sampler() if implementation == "reference" else contextlib.nullcontext()
    with context:
        return tc.run(functools.partial(tc.all_transforms, f, jac_argnum=1, with_jvp=True), xs, us, other)


@functools.cache
def central_difference():
    xs, us = case()
    return tc.central_difference(jax.jit(network("xla")), xs, us, 3e-3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("transform", tc.TRANSFORMS)
def test_transform(transform, implementation):
    got, want = results(implementation)[transform], results("reference")[transform]
    if transform == "jvp":
        assert tc.rel_err(got, want) <= 1e-4
        assert tc.rel_err(got[1], central_difference()) <= 3e-3, tc.rel_err(got[1], central_difference())
    elif transform == "linearize":
        assert tc.rel_err(got[0], want[0]) <= 1e-4 and tc.rel_err(got[1], want[1]) <= 1e-4
    elif transform == "jacfwd":
        assert tc.rel_err(got[0], want[0]) <= 1e-4 and tc.rel_err(got[0], got[1]) <= 1e-5
    elif transform == "vmap_of_grad":
        assert tc.rel_err(got[0], got[1]) <= 1e-5 and tc.rel_err(got[0], want[0]) <= 1e-4
    else:
        assert tc.rel_err(got, want) <= 1e-4
