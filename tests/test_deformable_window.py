"""Tests of the backward variants of geolrm_kernels.deformable_sample_backward_triton other than the default
(window accumulation, and the d_value / point-gradient split), run by the Pallas interpreter on CPU against the
XLA reference's VJP, and of their Triton lowering (no GPU needed)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from geolrm_kernels import deformable_sample_triton as tri
from geolrm_kernels.deformable_sample import deformable_sample
from test_deformable_sample import _triton_ir, make_inputs, rel_err

# Level 0: the default window is 8 x 8 pixels of a 9 x 12 map, so corners fall both inside and outside it
# (per-sample fallback); level 1: the 4 x 4 window is the whole map (every in-image corner takes the matmul).
SHAPES = ((9, 12), (4, 4))
NAMES = ("out", "d_value", "d_reference_points", "d_offsets", "d_attention_weights")


def _vjp_all(implementation, value, ref, offsets, weights, cot, **masks):
    f = lambda *a: deformable_sample(*a, SHAPES, implementation=implementation, **masks)
    out, vjp = jax.vjp(f, value, ref, offsets, weights)
    return (out, *vjp(cot))


@pytest.mark.parametrize("variant", ["window", "split", "split_window", "tent", "split_tent", "interleaved",
                                     "tent_interleaved"])
def test_backward_variant_through_the_op_matches_reference_fp32(monkeypatch, variant):
    """B = 2 x V = 3, a different view masked per scene (its reference points NaN), a masked query, points on
    borders and outside the image, C = 24; block_q = 8 over Q = 16 (two blocks), queries in Morton order."""
    monkeypatch.setattr(tri, "BACKWARD_VARIANT", variant)
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


@pytest.mark.parametrize("variant", ["window", "tent"])
def test_window_backward_bf16_values_non_pow2_channels_tiny_window(variant):
    """bf16 values and cotangent, C = 40 (64 lanes), 2 x 2 windows (almost every corner takes the per-sample
    fallback), the callers' query order; vs the fp32 reference on the same bf16-rounded inputs."""
    value, ref, offsets, weights = make_inputs(21, v=2, q=8, heads=2, c=40, shapes=SHAPES, dtype=jnp.bfloat16)
    mask = jnp.ones(ref.shape[:3], bool)
    cot = jax.random.normal(jax.random.key(4), (1, 2, 8, 2, 40)).astype(jnp.bfloat16)
    got = jax.jit(lambda *a: tri.backward(*a[:5], SHAPES, a[5], interpret=True, variant=variant, window=2,
                                          sort_queries=False))(value, ref, offsets, weights, mask, cot)
    from geolrm_kernels.deformable_sample import _reference_backward

    want = _reference_backward(value.astype(jnp.float32), ref, offsets, weights, mask, SHAPES,
                               cot.astype(jnp.float32))
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
    order = np.asarray(tri.spatial_query_order(ref, mask))[0]
    assert sorted(order.tolist()) == list(range(q)) and order.dtype == np.int32
    assert order[-1] == 5
    first = cluster[order[:-1]]  # 31 queries: clusters of 16 and 15
    run = int(np.sum(first == first[0]))
    assert run in (15, 16) and np.all(first[:run] == first[0]) and np.all(first[run:] != first[0])


@pytest.mark.parametrize("variant, kernels, atomics, extra_atomics, dots", [
    ("window", ["deformable_sample_bwd_window"], 5, 0, 1),
    ("split", ["deformable_sample_bwd_dvalue", "deformable_sample_bwd_point_grads"], 4, 0, 0),
    ("split_window", ["deformable_sample_bwd_dvalue_window", "deformable_sample_bwd_point_grads"], 5, 0, 1),
    ("tent", ["deformable_sample_bwd_tent"], 5, 0, 1),
    ("split_tent", ["deformable_sample_bwd_dvalue_tent", "deformable_sample_bwd_point_grads"], 5, 0, 1),
    ("interleaved", ["deformable_sample_bwd_interleaved"], 4, 3, 0),
    ("tent_interleaved", ["deformable_sample_bwd_tent_interleaved"], 5, 3, 1)])
def test_backward_variant_lowering_for_cuda(variant, kernels, atomics, extra_atomics, dots):
    """Triton IR: per level and lane chunk (C = 24: two chunks of 16), 4 corner atomics (the window variants'
    fallback) + 1 window atomic, all relaxed fp32 adds, and one tf32x3 dot per level and chunk of the
    (wy*wx, block_q) window weights; split variants run a d_value
    kernel and an atomic-free point-gradient kernel; interleaved ones add d_attention_weights and the two
    offset components of their view with 3 more atomics; unknown variants fail."""
    import re

    value, ref, offsets, weights = make_inputs(22, q=40, heads=2, c=24, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool)
    cot = jnp.ones((1, 2, 40, 2, 24))
    ir = _triton_ir(lambda *a: tri.backward(*a[:5], SHAPES, a[5], variant=variant, debug=True),
                    value, ref, offsets, weights, mask, cot)
    assert re.findall(r"tt\.func public @(\w+)", ir) == kernels
    found = re.findall(r"tt\.atomic_rmw (\w+), (\w+),", ir)
    chunks = len(tri.channel_chunks(24, tri.BACKWARD_CHANNEL_CHUNK))
    assert chunks == 2
    assert found == [("fadd", "relaxed")] * (atomics * len(SHAPES) * chunks + extra_atomics), found
    found = re.findall(r"tt\.dot .*inputPrecision = (\w+) : tensor<(\d+)x(\d+)xf32>", ir)
    want = [("tf32x3", "64", "16")] * chunks + [("tf32x3", "16", "16")] * chunks  # (wy*wx, block_q) per chunk
    assert found == want[:dots * 2 * chunks], found
    with pytest.raises(ValueError, match="backward variant"):
        tri.backward(value, ref, offsets, weights, mask, SHAPES, cot, variant="sorted")


def test_query_order_changes_nothing_but_the_order():
    """The atomic backward and the forward give the same results with and without the spatial query order
    (block_q = 4 over Q = 6: a block with slots past Q), and the order here is not the identity."""
    value, ref, offsets, weights = make_inputs(23, v=2, q=6, heads=2, c=24, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool).at[0, 0, 2].set(False)
    cot = jax.random.normal(jax.random.key(5), (1, 2, 6, 2, 24))
    order = np.asarray(tri.spatial_query_order(ref, mask))[0]
    assert sorted(order.tolist()) == list(range(6)) and order.tolist() != list(range(6))
    results = {}
    for sort in (False, True):
        out = tri.forward(value, ref, offsets, weights, mask, SHAPES, interpret=True, block_q=4, sort_queries=sort)
        grads = tri.backward(value, ref, offsets, weights, mask, SHAPES, cot, interpret=True, sort_queries=sort)
        results[sort] = (out, *grads)
    for name, a, b in zip(NAMES, results[False], results[True], strict=True):
        assert rel_err(b, a) <= 1e-6, name
    assert np.abs(np.asarray(results[True][1])).max() > 0


def test_backward_default_follows_the_value_dtype():
    """fp32 values run BACKWARD_VARIANT with BACKWARD_CHANNEL_CHUNK lanes (C = 24: 2 chunks, so 5 atomics per
    level and chunk in the tent d_value kernel), 16-bit values BACKWARD_VARIANT_16BIT with
    BACKWARD_CHANNEL_CHUNK_16BIT lanes (the same split tent kernels), read off the kernel names and atomics of
    the CUDA IR."""
    import re

    from geolrm_kernels import deformable_sample_backward_triton as bwd

    value, ref, offsets, weights = make_inputs(24, q=16, heads=2, c=24, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool)
    for dtype, variant, atomics in ((jnp.float32, tri.BACKWARD_VARIANT, 5 * 2 * len(SHAPES)),
                                    (jnp.bfloat16, tri.BACKWARD_VARIANT_16BIT, 5 * 2 * len(SHAPES))):
        cot = jnp.ones((1, 2, 16, 2, 24), dtype)
        ir = _triton_ir(lambda *a: tri.backward(*a[:5], SHAPES, a[5], debug=True), value.astype(dtype), ref,
                        offsets, weights, mask, cot)
        names = re.findall(r"tt\.func public @(\w+)", ir)
        expected = len(bwd.VARIANT_KERNELS[variant])
        assert len(names) == expected and all(n.startswith("deformable_sample_bwd") for n in names), (dtype, names)
        assert len(re.findall(r"tt\.atomic_rmw fadd", ir)) == atomics, dtype
    assert tri.BACKWARD_VARIANT_16BIT == "split_tent" and tri.BACKWARD_VARIANT == "split_tent"
    assert (tri.FORWARD_CHANNEL_CHUNK, tri.BACKWARD_CHANNEL_CHUNK, tri.BACKWARD_CHANNEL_CHUNK_16BIT) == (0, 16, 16)


@pytest.mark.parametrize("c", [48, 40])
def test_lane_layouts_match_reference(monkeypatch, c):
    """16-lane chunks (C = 48: three full chunks, no lane mask; C = 40: the last chunk half masked) and the
    one-block layout (chunk 0), with unclipped and clipped corner indices, in the forward and the default fp32
    backward, give the reference's output and gradients through the op, with masked views and queries and
    points on borders / outside the image."""
    value, ref, offsets, weights = make_inputs(25, b=1, v=2, q=16, heads=2, c=c, shapes=SHAPES, spread=0.5)
    ref = ref.at[:, :, :4].set(jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5 / 12, 1.0], [-0.3, 0.5]]))
    masks = dict(view_mask=jnp.array([[True, False]]), query_mask=jnp.ones((1, 16), bool).at[0, 5].set(False))
    cot = jax.random.normal(jax.random.key(6), (1, 2, 16, 2, c))
    want = _vjp_all("xla", value, ref, offsets, weights, cot, **masks)
    for chunk, clamp in ((16, False), (0, True), (0, False)):
        monkeypatch.setattr(tri, "FORWARD_CHANNEL_CHUNK", chunk)
        monkeypatch.setattr(tri, "BACKWARD_CHANNEL_CHUNK", chunk)
        monkeypatch.setattr(tri, "CLAMP_PIXELS", clamp)
        got = _vjp_all("pallas_interpret", value, ref, offsets, weights, cot, **masks)
        for name, g, w, tol in zip(NAMES, got, want, (1e-5,) + (1e-4,) * 4, strict=True):
            assert rel_err(g, w) <= tol, (chunk, name, rel_err(g, w))
    assert tri.channel_chunks(48, 16) == ((0, 16, False), (16, 16, False), (32, 16, False))
    assert tri.channel_chunks(40, 16)[-1] == (32, 16, True) and tri.channel_chunks(48, 0) == ((0, 64, True),)


def test_layout_benchmark_settings_apply_and_pick():
    """tools/bench_deformable_layouts.py: a setting changes the kernels' module defaults only while applied
    (the old setting traces the one-block layout: 4 d_value atomics per level), and the picked setting takes the
    fastest correct configuration of each kernel, the split pair from one lane chunk."""
    import importlib.util
    import re
    from pathlib import Path

    from geolrm_kernels import deformable_sample_backward_triton as bwd

    path = Path(__file__).resolve().parents[1] / "tools" / "bench_deformable_layouts.py"
    spec = importlib.util.spec_from_file_location("bench_deformable_layouts", path)
    layouts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layouts)
    default = layouts.module_defaults()
    assert default["fp32"][:2] == (tri.BACKWARD_CHANNEL_CHUNK, tri.BACKWARD_VARIANT)
    value, ref, offsets, weights = make_inputs(26, q=16, heads=2, c=24, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool)
    with layouts.applied(layouts.OLD, jnp.float32):
        assert tri.BACKWARD_CHANNEL_CHUNK == 0 and tri.CLAMP_PIXELS
        ir = _triton_ir(lambda *a: tri.backward(*a[:5], SHAPES, a[5], debug=True), value, ref, offsets, weights,
                        mask, jnp.ones((1, 2, 16, 2, 24)))
    assert len(re.findall(r"tt\.atomic_rmw fadd", ir)) == 5 * len(SHAPES)  # one chunk: 4 corners + window
    assert layouts.module_defaults() == default  # restored

    def entry(kernel, chunk, block_q, warps, ms, dtype="float32", ok=True, unroll=1):
        return dict(kernel=kernel, chunk=chunk, block_q=block_q, window=8 if kernel == "dvalue_tent" else None,
                    warps=warps, unroll=unroll, ms=ms, dtype=dtype, ok=ok)

    results = [entry("forward", 0, 16, 4, 6.2), entry("forward", 16, 32, 4, 6.1, ok=False),
               entry("forward", 0, 16, 4, 6.3, unroll=2),
               entry("dvalue_tent", 0, 16, 4, 16.0), entry("dvalue_tent", 16, 16, 2, 11.5),
               entry("dvalue_tent", 16, 16, 2, 9.0, unroll=2),  # no point-gradient kernel with unroll 2
               entry("point_grads", 0, 16, 8, 10.0), entry("point_grads", 16, 16, 4, 12.0),
               entry("interleaved", 16, 32, 4, 25.0, "bfloat16"), entry("interleaved", 0, 16, 8, 26.0, "bfloat16")]
    picked = layouts.picked_setting(results, default)
    assert picked["forward"] == [0, 16, 4, 1]  # the faster one failed its check
    assert picked["fp32"] == [16, "split_tent", [16, 8, 2], [16, 4], 1]
    assert picked["bf16"][:3] == [16, "interleaved", [32, None, 4]] and picked["bf16"][4] == 1
    # A faster whole split backward for 16-bit values takes the chunked point-gradient kernel's configuration.
    results.append(dict(entry("split_tent", 16, 16, 2, 19.0, "bfloat16"), window=8))
    picked = layouts.picked_setting(results, default)
    assert picked["bf16"] == [16, "split_tent", [16, 8, 2], list(bwd.SPLIT_POINT_GRADS_CONFIG), 1]


@pytest.mark.parametrize("tile_store", [True, False])
def test_point_gradient_kernel_stores_only_tiles(monkeypatch, tile_store):
    """The point-gradient kernel's CUDA lowering stores nothing but (block_q, NL*P) tiles with contiguous
    columns (d_reference_points as one tile, d_offsets planar), so Triton needs no layout conversion, and so no
    shared memory, for its stores (docs/deformable.md: XLA launches kernels that use shared memory preferring it
    over L1). REFERENCE_GRADIENT_TILE_STORE = False brings back the (block_q,) stores of d_reference_points."""
    import re

    from geolrm_kernels import deformable_sample_backward_triton as bwd

    monkeypatch.setattr(tri, "REFERENCE_GRADIENT_TILE_STORE", tile_store)
    value, ref, offsets, weights = make_inputs(27, q=32, heads=2, c=48, shapes=SHAPES)
    mask = jnp.ones(ref.shape[:3], bool)
    order = jnp.arange(32, dtype=jnp.int32)[None]
    cot = jnp.ones((1, 2, 32, 2, 48))
    ir = _triton_ir(lambda *a: bwd.backward_call(
        *a[:5], SHAPES, a[5], order, value_grad="none", point_grads=True, views_in_grid=False, block_q=16,
        num_warps=4, chunk=16, debug=True), value, ref, offsets, weights, mask, cot)
    stores = re.findall(r"tt\.store [^\n]*: tensor<([0-9x]+)x!tt\.ptr<f32>>", ir)
    assert stores, ir[:2000]
    one_d = [shape for shape in stores if "x" not in shape]
    tile = f"16x{offsets.shape[3] * offsets.shape[4]}"  # (block_q, NL*P)
    assert all(shape == tile for shape in stores if "x" in shape), stores
    assert (one_d == []) if tile_store else (one_d == ["16", "16"]), stores


def test_point_loop_unroll_changes_nothing_but_the_code():
    """point_unroll = 2 (two iterations of two points and one left over) and 5 (all unrolled) give the
    forward's and the chunked point-gradient kernel's results of the plain loop (to fp32 rounding: the
    interpreter's XLA fuses unrolled code differently)."""
    from geolrm_kernels import deformable_sample_backward_triton as bwd

    value, ref, offsets, weights = make_inputs(27, v=2, q=8, heads=1, c=48, shapes=SHAPES, points=5)
    mask = jnp.ones(ref.shape[:3], bool).at[0, 1, 3].set(False)
    cot = jax.random.normal(jax.random.key(7), (1, 2, 8, 1, 48))
    order = tri.resolve_query_order(None, ref, mask, True)

    def run(unroll):
        out = tri.forward(value, ref, offsets, weights, mask, SHAPES, interpret=True, point_unroll=unroll)
        grads = bwd.backward_call(value, ref, offsets, weights, mask, SHAPES, cot, order, value_grad="none",
                                  point_grads=True, views_in_grid=False, block_q=8, num_warps=4,
                                  interpret=True, chunk=16, point_unroll=unroll)
        return (out, *grads[1:])

    plain = run(1)
    assert float(jnp.abs(plain[0]).max()) > 0 and float(jnp.abs(plain[1]).max()) > 0
    for unroll in (2, 5):
        for a, b in zip(run(unroll), plain, strict=True):
            assert rel_err(a, b) <= 1e-6, unroll
