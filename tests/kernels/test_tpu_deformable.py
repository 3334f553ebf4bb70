"""The TPU (Pallas Mosaic) deformable-sampling kernels, run in TPU interpret mode with race detection, against
the XLA reference: forward and every gradient, masked views and queries, border points, several query blocks and
value chunks, a given query order, bf16 values. Shapes are tiny: interpret mode is slow on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from deformable_cases import SHAPES, make_inputs, rel_err
from geolrm_kernels.deformable import DeformableConfig, default_implementation, deformable_sample
from geolrm_kernels.deformable.reference import reference_backward, reference_forward
from geolrm_kernels.tpu import deformable_backward, deformable_forward
from geolrm_kernels.tpu.config import DeformableTpuConfig
from test_deformable import _vjp_all, _with_borders

NAMES = ("out", "d_value", "d_reference_points", "d_offsets", "d_attention_weights")


def races_found():
    """The interpreter's race flag (private API; None where this JAX does not have it)."""
    try:
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    except ImportError:
        return None
    return None if ipc.races is None else ipc.races.races_found


def assert_close(got, want, tols):
    for name, g, w, tol in zip(NAMES, got, want, tols, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        g32, w32 = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.all(np.isfinite(g32)), name
        assert rel_err(g32, w32) <= tol, (name, rel_err(g32, w32))


def _kernels(value, ref, offsets, weights, mask, shapes, cot, order=None, config=DeformableTpuConfig()):
    """Forward and backward kernels called directly, in TPU interpret mode with race detection."""
    out = deformable_forward.forward(value, ref, offsets, weights, mask, shapes, order, interpret=True,
                                     config=config)
    grads = deformable_backward.backward(value, ref, offsets, weights, mask, shapes, cot, order, interpret=True,
                                         config=config)
    assert races_found() is False  # the detector ran and found none
    return (out, *grads)


def _reference(value, ref, offsets, weights, mask, shapes, cot):
    return (reference_forward(value, ref, offsets, weights, mask, shapes),
            *reference_backward(value, ref, offsets, weights, mask, shapes, cot))


def test_matches_reference_fp32_masked_borders():
    """The shapes of tests/kernels/test_deformable.py: B = 2 x V = 3, a view masked per scene, a masked query,
    points on borders and outside."""
    value, ref, offsets, weights = make_inputs(10, b=2, v=3, q=6, heads=2, c=24)
    ref = _with_borders(ref)
    view_mask = jnp.array([[True, False, True], [False, True, True]])
    query_mask = jnp.array([[True, True, False, True, True, True], [True] * 6])
    mask = view_mask[:, :, None] & query_mask[:, None, :]
    cot = jax.random.normal(jax.random.key(1), (2, 3, 6, 2, 24))
    got = _kernels(value, ref, offsets, weights, mask, SHAPES, cot)
    assert_close(got, _reference(value, ref, offsets, weights, mask, SHAPES, cot), (1e-5, 1e-4, 1e-4, 1e-4, 1e-4))
    assert np.all(np.asarray(got[0])[0, 1] == 0) and np.all(np.asarray(got[1])[0, 1] == 0)
    assert np.all(np.asarray(got[3])[0, 2] == 0) and np.abs(np.asarray(got[3])[1, 2]).max() > 0


def test_op_under_jit_bf16_values():
    """Through the op (its derivative primitives, as the model calls it) under jit with the implementation
    "pallas_tpu_interpret" (the HLO interpreter), bf16 values and cotangent, masked queries."""
    value, ref, offsets, weights = make_inputs(11, v=2, q=6, heads=2, c=24, dtype=jnp.bfloat16)
    cot = jax.random.normal(jax.random.key(2), (1, 2, 6, 2, 24)).astype(jnp.bfloat16)
    masks = dict(query_mask=jnp.array([[True, False, True, True, True, True]]))
    got = jax.jit(_vjp_all, static_argnums=0)("pallas_tpu_interpret", value, ref, offsets, weights, cot, **masks)
    want = _vjp_all("xla", value.astype(jnp.float32), ref, offsets, weights, cot.astype(jnp.float32), **masks)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert rel_err(np.asarray(g, np.float32), np.asarray(w)) <= 1e-2, name


@pytest.mark.slow
def test_several_query_blocks_chunks_and_a_query_order():
    """Fresh odd shapes: Q = 150 (two query blocks of 128, the second ragged), a 23 x 37 level spanning 7
    chunks of 128 pixels and a 9 x 13 one sharing a chunk with it, C = 40, 3 points; a permuted query order
    (which must change nothing); kernels called directly with an explicit mask."""
    shapes = ((23, 37), (9, 13))
    value, ref, offsets, weights = make_inputs(3, b=1, v=2, q=150, heads=2, c=40, shapes=shapes, points=3)
    mask = jnp.ones((1, 2, 150), bool).at[0, 1, 40:60].set(False)
    cot = jax.random.normal(jax.random.key(4), (1, 2, 150, 2, 40))
    order = jax.random.permutation(jax.random.key(5), 150)[None].astype(jnp.int32)
    got = _kernels(value, ref, offsets, weights, mask, shapes, cot, order, DeformableTpuConfig(block_q=128, chunk=128))
    assert_close(got, _reference(value, ref, offsets, weights, mask, shapes, cot), (1e-5, 1e-4, 1e-4, 1e-4, 1e-4))


def test_default_on_tpu_and_config_checks(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert default_implementation() == "pallas_tpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert default_implementation() == "xla"
    with pytest.raises(ValueError, match="multiples of 128"):
        DeformableTpuConfig(block_q=100)


def test_tent_slope_is_the_floor_convention():
    d = jnp.array([-1.5, -1.0, -0.25, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(deformable_backward.tent_slope(d), [0.0, 1.0, 1.0, -1.0, -1.0, 0.0])


def test_the_op_passes_its_tpu_config_to_the_kernels(monkeypatch):
    """DeformableConfig.tpu reaches the TPU forward kernel (no module global), and other block sizes change
    nothing in the result: Q = 6 in one block of 256 queries, value chunks of 128 pixels."""
    seen = []
    forward = deformable_forward.forward
    monkeypatch.setattr(deformable_forward, "forward", lambda *a, **k: seen.append(k["config"]) or forward(*a, **k))
    config = DeformableConfig(tpu=DeformableTpuConfig(block_q=256, chunk=128))
    value, ref, offsets, weights = make_inputs(12, q=6, heads=2, c=8)
    got = deformable_sample(value, ref, offsets, weights, SHAPES, implementation="pallas_tpu_interpret", config=config)
    want = deformable_sample(value, ref, offsets, weights, SHAPES, implementation="xla")
    assert seen == [config.tpu]
    assert rel_err(got, want) <= 1e-5
