"""Tests of the Pallas kernels of geolrm_kernels.deformable at their tuning parameters (DeformableConfig): the
d_value kernel's pixel windows, the query order and the lane layouts, run by the Pallas interpreter on CPU against
the XLA reference, and their Triton lowering (no GPU needed)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from deformable_cases import make_inputs, rel_err, triton_ir
from geolrm_kernels.deformable import DEFAULT_CONFIG, DeformableConfig, deformable_sample
from geolrm_kernels.deformable import backward_triton as bwd
from geolrm_kernels.deformable import forward_triton as fwd
from geolrm_kernels.deformable.query_order import resolve_query_order, spatial_query_order
from geolrm_kernels.deformable.reference import reference_backward
from geolrm_kernels.deformable.triton_common import channel_chunks

# Level 0: the default window is 8 x 8 pixels of a 9 x 12 map, so corners fall both inside and outside it
# (per-sample fallback); level 1: the 4 x 4 window is the whole map (every in-image corner takes the matmul).
SHAPES = ((9, 12), (4, 4))
NAMES = ("out", "d_value", "d_reference_points", "d_offsets", "d_attention_weights")


def _vjp_all(implementation, value, ref, offsets, weights, cot, config=None, **masks):
    f = lambda *a: deformable_sample(*a, SHAPES, implementation=implementation, config=config, **masks)
    out, vjp = jax.vjp(f, value, ref, offsets, weights)
    return (out, *vjp(cot))


def test_pallas_through_the_op_matches_reference_fp32():
    """B = 2 x V = 3, a different view masked per scene (its reference points NaN), a masked query, points on
    borders and outside the image, C = 24; block_q = 8 over Q = 16 (two blocks), queries in Morton order."""
    value, ref, offsets, weights = make_inputs(20, b=2, v=3, q=16, heads=2, c=24, shapes=SHAPES, spread=0.5)
    special = jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5 / 12, 1.0], [-0.3, 0.5], [1.0, 0.5 / 9], [1.2, -0.2]])
    ref = ref.at[:, :, :6].set(special)
    view_mask = jnp.array([[True, False, True], [False, True, True]])
    ref = jnp.where(view_mask[:, :, None, None], ref, jnp.nan)
    query_mask = jnp.ones((2, 16), bool).at[0, 3].set(False).at[1, 9].set(False)
    cot = jax.random.normal(jax.random.key(3), (2, 3, 16, 2, 24))
    masks = dict(view_mask=view_mask, query_mask=query_mask)
    got = _vjp_all("pallas_interpret", value, ref, offsets, weights, cot, **masks)
    want = _vjp_all("xla", value, ref, offsets, weights, cot, **masks)
    for name, g, w, tol in zip(NAMES, got, want, (1e-5,) + (1e-4,) * 4, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert rel_err(g, w) <= tol, (name, rel_err(g, w))
    d_value = np.asarray(got[1])
    assert np.all(d_value[0, 1] == 0) and np.all(d_value[1, 0] == 0)  # masked views
    assert np.abs(d_value[0, 0, :108]).max() > 0 and np.abs(d_value[0, 0, 108:]).max() > 0  # both levels
    assert np.all(np.asarray(got[3])[0, 3] == 0) and np.all(np.asarray(got[4])[1, 9] == 0)  # masked queries


def test_backward_bf16_values_non_pow2_channels_tiny_window():
    """bf16 values and cotangent, C = 40 (64 lanes), 2 x 2 windows (almost every corner takes the per-sample
    fallback), queries in index order; vs the fp32 reference on the same bf16-rounded inputs."""
    value, ref, offsets, weights = make_inputs(21, v=2, q=8, heads=2, c=40, shapes=SHAPES, dtype=jnp.bfloat16)
    mask = jnp.ones(ref.shape[:3], bool)
    cot = jax.random.normal(jax.random.key(4), (1, 2, 8, 2, 40)).astype(jnp.bfloat16)
    config = DeformableConfig(window=2, backward_channel_chunk=0, sort_queries=False)
    order = resolve_query_order(None, ref, mask, sort_queries=False)
    got = jax.jit(lambda *a: bwd.backward(*a[:5], SHAPES, a[5], order, interpret=True, config=config))(
        value, ref, offsets, weights, mask, cot)
    want = reference_backward(value.astype(jnp.float32), ref, offsets, weights, mask, SHAPES, cot.astype(jnp.float32))
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
    for name, g, w in zip(NAMES[1:], got, want, strict=True):
        assert rel_err(jnp.asarray(g, jnp.float32), w) <= 1e-2, (name, rel_err(jnp.asarray(g, jnp.float32), w))


def test_spatial_query_order_is_a_permutation_grouping_close_points():
    """Two clusters of points, interleaved in the input order: the order lists each cluster contiguously
    (key from two views), and queries masked in both key views come last."""
    rng = np.random.default_rng(0)
    q = 32
    cluster = np.arange(q) % 2  # 0, 1, 0, 1, ...
    view0 = np.where(cluster[:, None] == 0, 0.2, 0.7) + rng.uniform(0, 0.02, (q, 2))
    view1 = np.where(cluster[:, None] == 0, 0.6, 0.1) + rng.uniform(0, 0.02, (q, 2))
    ref = jnp.asarray(np.stack([view0, view0, view1, view1])[None], jnp.float32)  # V=4: key views 0 and 1
    mask = jnp.ones((1, 4, q), bool).at[0, :2, 5].set(False)
    order = np.asarray(spatial_query_order(ref, mask))[0]
    assert sorted(order.tolist()) == list(range(q)) and order.dtype == np.int32
    assert order[-1] == 5
    first = cluster[order[:-1]]  # 31 queries: clusters of 16 and 15
    run = int(np.sum(first == first[0]))
    assert run in (15, 16) and np.all(first[:run] == first[0]) and np.all(first[run:] != first[0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_backward_lowering_for_cuda(dtype):
    """Triton IR: a d_value kernel and an atomic-free point-gradient kernel; per level and lane chunk (C = 24: two
    chunks of 16), 4 corner atomics (the window's fallback) + 1 window atomic, all relaxed fp32 adds, and one
    tf32x3 dot of the (wy*wx, block_q) window weights, for fp32 and 16-bit values alike."""
    import re

    value, ref, offsets, weights = make_inputs(22, q=40, heads=2, c=24, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool)
    order = jnp.arange(40, dtype=jnp.int32)[None]
    cot = jnp.ones((1, 2, 40, 2, 24), dtype)
    ir = triton_ir(lambda *a: bwd.backward(*a[:5], SHAPES, a[5], order, debug=True),
                    value.astype(dtype), ref, offsets, weights, mask, cot)
    assert re.findall(r"tt\.func public @(\w+)", ir) == ["deformable_sample_bwd_dvalue_tent",
                                                          "deformable_sample_bwd_point_grads"]
    found = re.findall(r"tt\.atomic_rmw (\w+), (\w+),", ir)
    chunks = len(channel_chunks(24, DEFAULT_CONFIG.backward_channel_chunk))
    assert chunks == 2
    assert found == [("fadd", "relaxed")] * (5 * len(SHAPES) * chunks), found
    found = re.findall(r"tt\.dot .*inputPrecision = (\w+) : tensor<(\d+)x(\d+)xf32>", ir)
    assert found == [("tf32x3", "64", "16")] * chunks + [("tf32x3", "16", "16")] * chunks, found


def test_query_order_changes_nothing_but_the_order():
    """The backward and the forward give the same results with and without the spatial query order (forward
    block_q = 4 over Q = 6: a block with slots past Q), and the order here is not the identity."""
    value, ref, offsets, weights = make_inputs(23, v=2, q=6, heads=2, c=24, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool).at[0, 0, 2].set(False)
    cot = jax.random.normal(jax.random.key(5), (1, 2, 6, 2, 24))
    order = np.asarray(spatial_query_order(ref, mask))[0]
    assert sorted(order.tolist()) == list(range(6)) and order.tolist() != list(range(6))
    results = {}
    config = DeformableConfig(forward_block_q=4)
    for sort in (False, True):
        order = resolve_query_order(None, ref, mask, sort)
        out = fwd.forward(value, ref, offsets, weights, mask, SHAPES, order, interpret=True, config=config)
        grads = bwd.backward(value, ref, offsets, weights, mask, SHAPES, cot, order, interpret=True)
        results[sort] = (out, *grads)
    for name, a, b in zip(NAMES, results[False], results[True], strict=True):
        assert rel_err(b, a) <= 1e-6, name
    assert np.abs(np.asarray(results[True][1])).max() > 0


@pytest.mark.parametrize("c", [48, 40])
def test_lane_layouts_match_reference(c):
    """16-lane chunks (C = 48: three full chunks, no lane mask; C = 40: the last chunk half masked) and the
    one-block layout (chunk 0), in the forward and the backward, give the reference's output and gradients
    through the op, with masked views and queries and points on borders / outside the image."""
    value, ref, offsets, weights = make_inputs(25, b=1, v=2, q=16, heads=2, c=c, shapes=SHAPES, spread=0.5)
    ref = ref.at[:, :, :4].set(jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5 / 12, 1.0], [-0.3, 0.5]]))
    masks = dict(view_mask=jnp.array([[True, False]]), query_mask=jnp.ones((1, 16), bool).at[0, 5].set(False))
    cot = jax.random.normal(jax.random.key(6), (1, 2, 16, 2, c))
    want = _vjp_all("xla", value, ref, offsets, weights, cot, **masks)
    for chunk in (16, 0):
        config = DeformableConfig(forward_channel_chunk=chunk, backward_channel_chunk=chunk)
        got = _vjp_all("pallas_interpret", value, ref, offsets, weights, cot, config=config, **masks)
        for name, g, w, tol in zip(NAMES, got, want, (1e-5,) + (1e-4,) * 4, strict=True):
            assert rel_err(g, w) <= tol, (chunk, name, rel_err(g, w))
    assert channel_chunks(48, 16) == ((0, 16, False), (16, 16, False), (32, 16, False))
    assert channel_chunks(40, 16)[-1] == (32, 16, True) and channel_chunks(48, 0) == ((0, 64, True),)


def test_point_gradient_kernel_stores_only_tiles():
    """The point-gradient kernel's CUDA lowering stores nothing but (block_q, NL*P) tiles with contiguous
    columns (d_reference_points as one tile, d_offsets planar), so Triton needs no layout conversion, and so no
    shared memory, for its stores (docs/kernels.md: XLA launches kernels that use shared memory preferring it
    over L1)."""
    import re

    value, ref, offsets, weights = make_inputs(27, q=32, heads=2, c=48, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool)
    order = jnp.arange(32, dtype=jnp.int32)[None]
    cot = jnp.ones((1, 2, 32, 2, 48))
    ir = triton_ir(lambda *a: bwd.backward(*a[:5], SHAPES, a[5], order, debug=True), value, ref, offsets, weights,
                    mask, cot)
    kernels = ir.split("tt.func public @")
    point_grads = [k for k in kernels if k.startswith("deformable_sample_bwd_point_grads")]
    assert len(point_grads) == 1, [k[:40] for k in kernels]
    stores = re.findall(r"tt\.store [^\n]*: tensor<([0-9x]+)x!tt\.ptr<f32>>", point_grads[0])
    tile = f"16x{offsets.shape[3] * offsets.shape[4]}"  # (block_q, NL*P)
    assert stores and all(shape == tile for shape in stores), stores
