"""Tests of geolrm_kernels.view_softmax_pool: the reference against float64 numpy, the Pallas kernel (run by the
Pallas interpreter) against the reference on fresh random inputs, gradients, masks and transforms."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from geolrm_kernels.view_softmax_pool import view_softmax_pool, view_softmax_pool_reference
from jax.test_util import check_grads


def make_inputs(seed, b=2, v=3, s=11, d=24, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, v, s, d)), dtype)
    w = jnp.asarray(rng.standard_normal(d) / np.sqrt(d), dtype)
    bias = jnp.float32(rng.standard_normal())
    mask = jnp.asarray(rng.uniform(size=(b, v)) < 0.7).at[:, 0].set(True)
    return x, w, bias, mask


def naive_numpy(x, w, bias, mask):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    logits = np.einsum("bvsd,d->bvs", x, w) + float(bias)
    logits = np.where(np.asarray(mask)[:, :, None], logits, -1e30)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    return np.einsum("bvs,bvsd->bsd", weights, x)


def test_reference_matches_numpy():
    x, w, bias, mask = make_inputs(0)
    np.testing.assert_allclose(np.asarray(view_softmax_pool_reference(x, w, bias, mask)), naive_numpy(x, w, bias, mask),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed, d", [(1, 24), (2, 40), (3, 64)])  # non-powers of two are masked lanes
def test_pallas_matches_reference_fp32(seed, d):
    x, w, bias, mask = make_inputs(seed, d=d, s=13)
    got = view_softmax_pool(x, w, bias, mask, implementation="pallas_interpret")
    want = view_softmax_pool_reference(x, w, bias, mask)
    assert got.shape == (2, 13, d) and got.dtype == jnp.float32
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * scale)


def test_pallas_bf16():
    x, w, bias, mask = make_inputs(4, dtype=jnp.bfloat16)
    got = view_softmax_pool(x, w, bias, mask, implementation="pallas_interpret")
    want = view_softmax_pool_reference(x, w, bias, mask)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-2,
                               atol=1e-2 * float(jnp.abs(want.astype(jnp.float32)).max()))


def test_masked_views_are_ignored_and_all_masked_is_uniform():
    x, w, bias, _ = make_inputs(5, b=2, v=3)
    mask = jnp.asarray([[True, False, True], [False, False, False]])
    pool = functools.partial(view_softmax_pool, implementation="pallas_interpret")
    got = np.asarray(pool(x, w, bias, mask))
    changed = x.at[0, 1].set(1e4)  # a masked view's values do not matter
    np.testing.assert_allclose(np.asarray(pool(changed, w, bias, mask))[0], got[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], np.asarray(x[1]).mean(0), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(got))


def test_gradients_match_reference_and_finite_differences():
    x, w, bias, mask = make_inputs(6, s=5, d=8)
    g = jnp.asarray(np.random.default_rng(7).standard_normal((2, 5, 8)), jnp.float32)

    def loss(impl):
        return lambda x, w, b: jnp.sum(view_softmax_pool(x, w, b, mask, implementation=impl) * g)

    got = jax.grad(loss("pallas_interpret"), argnums=(0, 1, 2))(x, w, bias)
    want = jax.grad(loss("xla"), argnums=(0, 1, 2))(x, w, bias)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        assert np.all(np.isfinite(np.asarray(a)))
    check_grads(lambda x, w, b: view_softmax_pool(x, w, b, mask, implementation="pallas_interpret"), (x, w, bias),
                order=1, modes=("rev",), atol=1e-3, rtol=1e-3)


def test_jit_vmap_scan_remat():
    x, w, bias, mask = make_inputs(8, b=1, s=6, d=16)
    fn = jax.jit(lambda x: view_softmax_pool(x, w, bias, mask, implementation="pallas_interpret"))
    want = view_softmax_pool_reference(x, w, bias, mask)
    np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(want), rtol=1e-5, atol=1e-6)
    stacked = jnp.stack([x, 2 * x])
    batched = jax.vmap(fn)(stacked)
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(view_softmax_pool_reference(2 * x, w, bias, mask)),
                               rtol=1e-5, atol=1e-5)

    def body(carry, xs):
        return carry + jax.checkpoint(fn)(xs).sum(), None

    total, _ = jax.lax.scan(body, jnp.float32(0), stacked)
    np.testing.assert_allclose(float(total), float(batched.sum()), rtol=1e-5)


def test_bad_shapes_name_the_arguments():
    x, w, bias, mask = make_inputs(9)
    with pytest.raises(ValueError, match="view_mask"):
        view_softmax_pool(x, w[:-1], bias, mask)
    with pytest.raises(ValueError, match="implementation"):
        view_softmax_pool(x, w, bias, mask, implementation="cuda")


@pytest.mark.parametrize("block_s, unroll", [(1, False), (2, True), (4, False)])
def test_kernel_settings_agree(block_s, unroll):
    from geolrm_kernels.view_softmax_pool import view_softmax_pool_pallas

    x, w, bias, mask = make_inputs(10, s=7, d=24)
    got = view_softmax_pool_pallas(x, w, bias, mask, interpret=True, block_s=block_s, unroll=unroll)
    np.testing.assert_allclose(np.asarray(got), np.asarray(view_softmax_pool_reference(x, w, bias, mask)),
                               rtol=1e-5, atol=1e-5)
