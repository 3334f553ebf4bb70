"""Tests of geolrm_kernels.deformable: the XLA reference against a naive float64 numpy implementation
(and torch's grid_sample when torch is importable), its memory footprint, and the Pallas kernels run by the
Pallas interpreter against the reference. Shapes are kept tiny: interpret mode is slow on CPU.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from deformable_cases import (
    LATTICE_SHAPES,
    SHAPES,
    lattice_inputs,
    make_inputs,
    naive_numpy,
    rel_err,
    triton_ir,
)
from geolrm_kernels.deformable import deformable_sample, deformable_sample_reference
from jax.test_util import check_grads


# ------------------------------------------------------------------------------------------------ reference
def test_reference_matches_naive_numpy_with_masks():
    value, ref, offsets, weights = make_inputs(0, b=2, v=3, q=7, heads=3, c=5)
    view_mask = jnp.array([[True, False, True], [True, True, True]])
    query_mask = jnp.array([[True] * 6 + [False], [False] + [True] * 6])
    out = jax.jit(deformable_sample_reference, static_argnums=4)(
        value, ref, offsets, weights, SHAPES, view_mask, query_mask)
    expected = naive_numpy(value, ref, offsets, weights, SHAPES, view_mask, query_mask)
    assert out.shape == (2, 3, 7, 3, 5) and out.dtype == jnp.float32
    assert rel_err(out, expected) < 1e-5
    assert np.all(np.asarray(out)[0, 1] == 0) and np.all(np.asarray(out)[0, :, 6] == 0)
    assert np.abs(np.asarray(out)[0, 0, :6]).max() > 0


def test_reference_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    value, ref, offsets, weights = make_inputs(1, b=1, v=2, q=5, heads=2, c=3, points=3)
    b, v, _, heads, c = value.shape
    q = ref.shape[2]
    out = torch.zeros(b * v * heads, c, q)
    start = 0
    for level, (h, w) in enumerate(SHAPES):
        vmap = torch.from_numpy(np.array(value[:, :, start:start + h * w])).reshape(b, v, h, w, heads, c)
        vmap = vmap.permute(0, 1, 4, 5, 2, 3).reshape(b * v * heads, c, h, w)
        start += h * w
        loc = np.asarray(ref)[:, :, :, None, None, :] + np.asarray(offsets)[:, None, :, :, level]
        grid = torch.from_numpy(loc * 2 - 1).permute(0, 1, 3, 2, 4, 5).reshape(b * v * heads, q, -1, 2)
        sampled = f.grid_sample(vmap, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
        wt = torch.from_numpy(np.array(weights[:, :, :, level])).permute(0, 2, 1, 3)  # (B, H, Q, P)
        wt = wt[:, None].expand(b, v, heads, q, wt.shape[-1]).reshape(b * v * heads, 1, q, -1)
        out += (sampled * wt).sum(-1)
    expected = out.reshape(b, v, heads, c, q).permute(0, 1, 4, 2, 3).numpy()
    got = deformable_sample_reference(value, ref, offsets, weights, SHAPES)
    assert rel_err(got, expected) < 1e-5


def test_reference_borders_and_outside():
    """Points exactly on pixel centres, on the image borders (u = 0, 1) and fully outside."""
    value, ref, offsets, weights = make_inputs(2, q=8)
    h, w = SHAPES[0]
    special = np.array([[0.0, 0.0], [1.0, 1.0], [0.5 / w, 0.5 / h], [1.0 - 0.5 / w, 0.5],
                        [-0.2, 0.5], [1.3, 0.1], [0.0, 1.0], [3.5 / w, 2.5 / h]], np.float32)
    ref = jnp.broadcast_to(jnp.asarray(special), ref.shape)
    offsets = jnp.zeros_like(offsets)
    out = deformable_sample_reference(value, ref, offsets, weights, SHAPES)
    expected = naive_numpy(value, ref, offsets, weights, SHAPES)
    assert rel_err(out, expected) < 1e-5
    assert np.all(np.asarray(out)[:, :, 4:6] == 0)  # outside both levels


def test_reference_gradients_match_autodiff_of_naive_jnp():
    """The hand-written backward against jax.vjp of a direct (materializing) jnp formulation."""
    value, ref, offsets, weights = make_inputs(3, b=1, v=2, q=5, heads=2, c=6, points=3)
    mask = jnp.array([[True, True, False, True, True]])

    def direct(value, ref, offsets, weights):
        out = 0.0
        start = 0
        b, v, _, heads, c = value.shape
        for level, (h, w) in enumerate(SHAPES):
            vmap = value[:, :, start:start + h * w].reshape(b, v, h, w, heads, c)
            start += h * w
            loc = ref[:, :, :, None, None, :] + offsets[:, None, :, :, level]  # (B, V, Q, H, P, 2)
            x = loc[..., 0] * w - 0.5
            y = loc[..., 1] * h - 0.5
            x0, y0 = jnp.floor(x), jnp.floor(y)
            hi = jnp.arange(heads).reshape(1, 1, 1, heads, 1)
            bi = jnp.arange(b).reshape(b, 1, 1, 1, 1)
            vi = jnp.arange(v).reshape(1, v, 1, 1, 1)
            for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                    xc = jnp.clip(xi, 0, w - 1).astype(jnp.int32)
                    yc = jnp.clip(yi, 0, h - 1).astype(jnp.int32)
                    sample = vmap[bi, vi, yc, xc, hi]  # (B, V, Q, H, P, C)
                    coef = jnp.where(inside, wx * wy, 0.0) * weights[:, None, :, :, level]
                    out = out + jnp.sum(coef[..., None] * sample, axis=4)
        return jnp.where(mask[:, None, :, None, None], out, 0.0)

    cot = jax.random.normal(jax.random.key(0), (1, 2, 5, 2, 6))
    vjp_of = lambda f: jax.jit(lambda *a: jax.vjp(f, *a)[1](cot))
    grads = vjp_of(lambda *a: deformable_sample_reference(*a, SHAPES, query_mask=mask))(value, ref, offsets, weights)
    want = vjp_of(direct)(value, ref, offsets, weights)
    for name, got, w in zip(("value", "ref", "offsets", "weights"), grads, want, strict=True):
        assert rel_err(got, w) < 1e-4, name
    assert np.all(np.asarray(grads[1])[:, :, 2] == 0) and np.all(np.asarray(grads[3])[:, 2] == 0)


def test_reference_check_grads():
    args = lattice_inputs(4, q=3, heads=1, c=3)
    f = jax.jit(lambda *a: deformable_sample_reference(*a, LATTICE_SHAPES))
    check_grads(f, args, order=1, modes=("rev",), atol=1e-2, rtol=1e-2, eps=1e-3)


def test_reference_nan_locations_of_masked_views_stay_out():
    value, ref, offsets, weights = make_inputs(5, v=2)
    ref = ref.at[:, 1].set(jnp.nan)
    view_mask = jnp.array([[True, False]])
    f = lambda v, r, o, w: deformable_sample_reference(v, r, o, w, SHAPES, view_mask)
    out, grads = jax.jit(lambda *a: (f(*a), jax.grad(lambda *b: jnp.sum(f(*b)), argnums=(0, 1, 2, 3))(*a)))(
        value, ref, offsets, weights)
    for a in (out, *grads):
        assert np.all(np.isfinite(np.asarray(a)))
    assert np.all(np.asarray(grads[1])[:, 1] == 0)


def test_reference_memory_footprint():
    """The compiled forward's temp allocation is <= 2x (argument + output bytes), measured with
    ``jax.jit(f).lower(...).compile().memory_analysis()``, on a shape where the Q*H*NL*P*C sample tensor
    would be 16x the output: materializing it could not pass. The backward's temp is checked to stay below
    that tensor's size as well.
    """
    b, v, q, heads, c, points = 1, 4, 512, 4, 32, 8
    shapes = ((32, 32), (16, 16))
    length = sum(h * w for h, w in shapes)
    args = (jax.ShapeDtypeStruct((b, v, length, heads, c), jnp.float32),
            jax.ShapeDtypeStruct((b, v, q, 2), jnp.float32),
            jax.ShapeDtypeStruct((b, q, heads, 2, points, 2), jnp.float32),
            jax.ShapeDtypeStruct((b, q, heads, 2, points), jnp.float32))
    fwd = lambda *a: deformable_sample_reference(*a, shapes)
    stats = jax.jit(fwd).lower(*args).compile().memory_analysis()
    if stats is None:
        pytest.skip("memory_analysis unavailable on this backend")
    big = b * v * q * heads * 2 * points * c * 4
    io = stats.argument_size_in_bytes + stats.output_size_in_bytes
    assert stats.temp_size_in_bytes <= 2 * io, (stats.temp_size_in_bytes, io)
    assert 2 * io < big

    def fwd_bwd(*a):
        out, vjp = jax.vjp(fwd, *a)
        return vjp(out)

    stats_b = jax.jit(fwd_bwd).lower(*args).compile().memory_analysis()
    assert stats_b.temp_size_in_bytes < big, (stats_b.temp_size_in_bytes, big)


# ---------------------------------------------------------------------------------------- Pallas (interpret)
def _with_borders(ref):
    """Puts some reference points exactly on image borders / pixel centres / outside."""
    h, w = SHAPES[0]
    special = jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5 / w, 1.0], [-0.3, 0.5], [1.0, 0.5 / h]])
    return ref.at[:, :, :5].set(special)


def _vjp_all(implementation, value, ref, offsets, weights, cot, **masks):
    f = lambda *a: deformable_sample(*a, SHAPES, implementation=implementation, **masks)
    out, vjp = jax.vjp(f, value, ref, offsets, weights)
    return (out, *vjp(cot))


def test_pallas_interpret_matches_reference_fp32_masked_borders():
    """B = 2 scenes x V = 3 views (the backward's grid is over (H, query blocks, B) and loops over the views),
    a different view masked per scene, a masked query, points on borders and outside."""
    value, ref, offsets, weights = make_inputs(10, b=2, v=3, q=6, heads=2, c=24)
    ref = _with_borders(ref)
    masks = dict(view_mask=jnp.array([[True, False, True], [False, True, True]]),
                 query_mask=jnp.array([[True, True, False, True, True, True], [True] * 6]))
    cot = jax.random.normal(jax.random.key(1), (2, 3, 6, 2, 24))
    got = _vjp_all("pallas_interpret", value, ref, offsets, weights, cot, **masks)
    want = _vjp_all("xla", value, ref, offsets, weights, cot, **masks)
    names = ("out", "d_value", "d_reference_points", "d_offsets", "d_attention_weights")
    for name, g, w, tol in zip(names, got, want, (1e-5, 1e-4, 1e-4, 1e-4, 1e-4), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert rel_err(g, w) <= tol, (name, rel_err(g, w))
    assert np.all(np.asarray(got[0])[0, 1] == 0) and np.all(np.asarray(got[1])[0, 1] == 0)
    assert np.all(np.asarray(got[0])[1, 0] == 0) and np.all(np.asarray(got[1])[1, 0] == 0)
    assert np.all(np.asarray(got[3])[0, 2] == 0) and np.abs(np.asarray(got[3])[1, 2]).max() > 0
    assert np.abs(np.asarray(got[1])[1, 1]).max() > 0


def test_pallas_interpret_bf16_values_accumulate_in_fp32():
    value, ref, offsets, weights = make_inputs(11, v=2, q=6, heads=2, c=24, dtype=jnp.bfloat16)
    cot = jax.random.normal(jax.random.key(2), (1, 2, 6, 2, 24)).astype(jnp.bfloat16)
    got = _vjp_all("pallas_interpret", value, ref, offsets, weights, cot)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
    want = naive_numpy(value.astype(jnp.float32), ref, offsets, weights, SHAPES)
    assert rel_err(got[0].astype(jnp.float32), want) <= 1e-2
    want_grads = _vjp_all("xla", value.astype(jnp.float32), ref, offsets, weights, cot.astype(jnp.float32))
    for g, w in zip(got[1:], want_grads[1:], strict=True):
        assert rel_err(jnp.asarray(g, jnp.float32), w) <= 1e-2


def test_pallas_interpret_check_grads():
    args = lattice_inputs(12, q=3, heads=1, c=3)
    f = jax.jit(lambda *a: deformable_sample(*a, LATTICE_SHAPES, implementation="pallas_interpret"))
    check_grads(f, args, order=1, modes=("rev",), atol=1e-2, rtol=1e-2, eps=1e-3)


def test_pallas_interpret_under_vmap_jit_scan_remat():
    value, ref, offsets, weights = make_inputs(13, v=2, q=4, heads=1, c=8)
    stacked = [jnp.stack([a, a * 0.5]) for a in (value, ref, offsets, weights)]
    f = lambda impl: lambda *a: deformable_sample(*a, SHAPES, implementation=impl)
    got = jax.jit(jax.vmap(f("pallas_interpret")))(*stacked)
    want = jax.vmap(f("xla"))(*stacked)
    assert got.shape == (2, 1, 2, 4, 1, 8) and rel_err(got, want) <= 1e-5

    def loss(impl, value):
        def step(carry, scale):
            out = jax.checkpoint(f(impl))(value * scale, ref, offsets, weights)
            return carry + jnp.sum(out * out), None

        total, _ = jax.lax.scan(step, 0.0, jnp.array([1.0, 0.7]))
        return total

    got_grad = jax.jit(jax.grad(lambda v: loss("pallas_interpret", v)))(value)
    want_grad = jax.jit(jax.grad(lambda v: loss("xla", v)))(value)
    assert rel_err(got_grad, want_grad) <= 1e-4


def test_dispatch_and_input_errors():
    from geolrm_kernels.deformable import GPU_DEFAULT_IMPLEMENTATION, IMPLEMENTATIONS, default_implementation

    assert GPU_DEFAULT_IMPLEMENTATION in IMPLEMENTATIONS
    assert default_implementation() == (GPU_DEFAULT_IMPLEMENTATION if jax.default_backend() == "gpu" else "xla")
    value, ref, offsets, weights = make_inputs(14, q=3, heads=1, c=4)
    auto = deformable_sample(value, ref, offsets, weights, SHAPES)
    assert rel_err(auto, deformable_sample_reference(value, ref, offsets, weights, SHAPES)) == 0
    with pytest.raises(ValueError, match="implementation"):
        deformable_sample(value, ref, offsets, weights, SHAPES, implementation="cuda")
    with pytest.raises(ValueError, match="offsets"):
        deformable_sample(value, ref, offsets[:, :2], weights, SHAPES)
    with pytest.raises(ValueError, match="spatial_shapes"):
        deformable_sample(value, ref, offsets, weights, ((5, 7), (3, 3)))
    with pytest.raises(ValueError, match="view_mask"):
        deformable_sample(value, ref, offsets, weights, SHAPES, view_mask=jnp.ones((1, 3), bool))


def test_pallas_backward_uses_relaxed_atomics_for_d_value_only():
    """Triton IR of the backward: the only atomics are the d_value kernel's 4 corners + 1 window per level and lane
    chunk (C = 24: two chunks of 16), relaxed by default and acquire-release with relaxed_atomics=False (the public
    plgpu.atomic_add)."""
    import re

    from geolrm_kernels import atomics
    from geolrm_kernels.deformable import DeformableConfig, backward_triton, triton_common

    # The self-test must pass when first run while a caller's jit is being traced (the model's case).
    atomics.relaxed_atomics_status.cache_clear()
    statuses = []
    jax.jit(lambda x: statuses.append(atomics.relaxed_atomics_status()) or x)(1.0)
    assert statuses == [(True, None)], statuses
    value, ref, offsets, weights = make_inputs(16, q=4, heads=2, c=24)
    mask = jnp.ones(ref.shape[:3], bool)
    order = jnp.arange(4, dtype=jnp.int32)[None]
    cot = jnp.ones((1, 2, 4, 2, 24))
    found = {}
    for relaxed in (True, False):
        config = DeformableConfig(relaxed_atomics=relaxed)
        ir = triton_ir(lambda *a, config=config: backward_triton.backward(*a[:5], SHAPES, a[5], order, config=config,
                                                                          debug=True),
                        value, ref, offsets, weights, mask, cot)
        found[relaxed] = re.findall(r"tt\.atomic_rmw (\w+), (\w+),", ir)
    chunks = len(triton_common.channel_chunks(24, DeformableConfig().backward_channel_chunk))
    assert chunks == 2
    assert found[True] == [("fadd", "relaxed")] * 5 * len(SHAPES) * chunks, found[True]
    assert found[False] == [("fadd", "acq_rel")] * 5 * len(SHAPES) * chunks, found[False]


def test_pallas_runs_one_forward_and_two_backward_kernels():
    """fwd+bwd lowered for CUDA: "pallas" runs three Triton kernels (forward, d_value, point gradients), "xla"
    none."""
    value, ref, offsets, weights = make_inputs(17, q=4, heads=1, c=8)
    cot = jnp.ones((1, 2, 4, 1, 8))

    def fwd_bwd(impl):
        def f(*a):
            out, vjp = jax.vjp(lambda *b: deformable_sample(*b, SHAPES, implementation=impl), *a)
            return out, vjp(cot)
        return jax.jit(f).trace(value, ref, offsets, weights).lower(lowering_platforms=("cuda",)).as_text()

    triton_call = "__gpu$xla.gpu.triton"
    assert fwd_bwd("pallas").count(triton_call) == 3
    assert fwd_bwd("xla").count(triton_call) == 0


def test_forward_fuses_its_multiply_adds_on_cuda():
    """The forward's CUDA lowering holds the inline fma.rn.f32 (fused_multiply_add), one per corner of each
    level's point loop and lane chunk; the interpreter computes a * b + c (the interpret tests above)."""
    import re

    from geolrm_kernels.deformable import DEFAULT_CONFIG, forward_triton, triton_common

    value, ref, offsets, weights = make_inputs(18, q=4, heads=2, c=24)
    mask = jnp.ones(ref.shape[:3], bool)
    order = jnp.arange(4, dtype=jnp.int32)[None]
    ir = triton_ir(lambda *a: forward_triton.forward(*a, SHAPES, order, debug=True), value, ref, offsets, weights,
                    mask)
    found = re.findall(r'tt\.elementwise_inline_asm "fma\.rn\.f32', ir)
    chunks = triton_common.channel_chunks(24, DEFAULT_CONFIG.forward_channel_chunk)
    assert len(found) == 4 * len(SHAPES) * len(chunks), found


def test_precomputed_query_order_changes_nothing_but_the_order():
    from geolrm_kernels.deformable import kernel_query_order

    value, ref, offsets, weights = make_inputs(31, b=2, q=7)
    view_mask = jnp.array([[True, True], [True, False]])
    query_mask = jnp.array([[True] * 7, [True, False, True, True, True, True, True]])
    order = kernel_query_order(ref, view_mask, query_mask, implementation="pallas_interpret")
    assert order.shape == (2, 7) and order.dtype == jnp.int32
    assert sorted(np.asarray(order[1]).tolist()) == list(range(7))
    assert kernel_query_order(ref, implementation="xla") is None
    reversed_order = jnp.broadcast_to(jnp.arange(6, -1, -1, dtype=jnp.int32), (2, 7))

    def loss(impl, order):
        def f(v, r, o, w):
            out = deformable_sample(v, r, o, w, SHAPES, view_mask, query_mask, implementation=impl,
                                    query_order=order)
            return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))
        return jax.value_and_grad(f, argnums=(0, 1, 2, 3))

    want_value, want_grads = loss("xla", None)(value, ref, offsets, weights)
    for order_given in (order, reversed_order):
        got_value, got_grads = loss("pallas_interpret", order_given)(value, ref, offsets, weights)
        np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
        for got, want in zip(got_grads, want_grads, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="query_order must be"):
        deformable_sample(value, ref, offsets, weights, SHAPES, query_order=order[:, :3])


def test_unclipped_bilinear_corners_agree_where_inside():
    """bilinear_corners(clamp_pixels=False), which the GPU kernels use: the same in-image tests, weights and
    derivatives as the clipped form, and the same pixel wherever the corner is in the image (on borders,
    pixel centres and outside too)."""
    from geolrm_kernels.deformable.reference import bilinear_corners

    rng = np.random.default_rng(40)
    u = jnp.asarray(np.concatenate([rng.uniform(-0.3, 1.3, 500), [0.0, 1.0, 0.5 / 12, 11.5 / 12, -0.1, 1.1]]),
                    jnp.float32)
    v = jnp.asarray(np.concatenate([rng.uniform(-0.3, 1.3, 500), [1.0, 0.0, 0.5 / 9, 8.5 / 9, 1.2, -0.2]]),
                    jnp.float32)
    for clipped, unclipped in zip(bilinear_corners(u, v, 9, 12), bilinear_corners(u, v, 9, 12, clamp_pixels=False),
                                  strict=True):
        inside = np.asarray(clipped[1])
        np.testing.assert_array_equal(inside, np.asarray(unclipped[1]))
        assert 0 < inside.sum() < inside.size
        np.testing.assert_array_equal(np.asarray(clipped[0])[inside], np.asarray(unclipped[0])[inside])
        for a, b in zip(clipped[2:], unclipped[2:], strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
