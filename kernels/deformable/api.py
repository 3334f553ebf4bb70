"""Multi-view multi-scale deformable sampling (the cross-attention core of GeoLRM's reconstruction network).

Contract (fixed in the project's cross-helper contracts)::

    deformable_sample(value, reference_points, offsets, attention_weights, spatial_shapes,
                      view_mask=None, query_mask=None, *, implementation=None, query_order=None,
                      config=None) -> (B, V, Q, H, C)

- ``value`` (B, V, L, H, C): per-view value maps, channel-last per head. L = sum of h_l * w_l over the levels,
  packed in the order of ``spatial_shapes``, each level row-major (y, x).
- ``spatial_shapes``: static tuple of (h, w) per level, e.g. ``((28, 28), (16, 16))``.
- ``reference_points`` (B, V, Q, 2): normalized (u, v) of each query in each view, u along the width.
- ``offsets`` (B, Q, H, NL, P, 2): offsets already divided by their level's (w, h); shared by all views.
- ``attention_weights`` (B, Q, H, NL, P): already softmaxed over NL * P; shared by all views.
- location = reference_points[b, v, q] + offsets[b, q, h, l, p]; bilinear sampling with zero padding and
  ``align_corners=False`` semantics (pixel x = u * w_l - 0.5, y = v * h_l - 0.5), accumulated in fp32:
  ``out[b, v, q, h] = sum_{l, p} attention_weights[b, q, h, l, p] * sample(value[b, v, level l, :, h], loc)``.
- ``view_mask`` (B, V) / ``query_mask`` (B, Q) bool: masked (b, v, q) entries give 0 output and 0 gradients
  (their locations are never read, so NaN/inf reference points there are harmless).
- Output dtype = ``value.dtype``; derivatives for value, reference_points, offsets and attention_weights (in
  their input dtypes) by every JAX transform: ``grad`` runs the implementation's backward kernels, forward mode
  and higher orders the XLA reference in forward mode (``DEFORMABLE_SAMPLE``, see
  ``geolrm_kernels.derivatives``).

Implementations (``implementation=``):

- ``"xla"``: the pure-jnp reference (``reference.py``, :func:`deformable_sample_reference`).
- ``"pallas"``: Pallas kernels on the Triton backend (``forward_triton.py``, ``backward_triton.py``): gathers
  by indexed loads; the backward accumulates d_value in pixel windows and relaxed fp32 atomic adds, and loops
  over the views in registers for d_offsets / d_attention_weights / d_reference_points. Their tuning
  parameters are a :class:`DeformableConfig` (``config=``), which changes only the speed.
- ``"pallas_interpret"``: the Pallas kernels run by the Pallas interpreter (CPU tests).
- ``"pallas_tpu"``: Pallas Mosaic kernels for TPU (``geolrm_kernels.tpu``): Mosaic has no per-lane gather,
  so the bilinear samples are matmuls of tent-window weights with DMA'd value chunks (docs/tpu.md); their block
  sizes are the ``tpu`` field of the :class:`DeformableConfig`.
- ``"pallas_tpu_interpret"``: those kernels run by the Pallas (HLO) interpreter, under any transform (CPU tests).
- ``None``: GPU -> ``GPU_DEFAULT_IMPLEMENTATION``; TPU -> ``"pallas_tpu"``; CPU -> ``"xla"``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from geolrm_kernels.deformable import backward_triton, forward_triton
from geolrm_kernels.deformable.config import DEFAULT_CONFIG, DeformableConfig
from geolrm_kernels.deformable.query_order import resolve_query_order
from geolrm_kernels.deformable.reference import reference_backward, reference_forward
from geolrm_kernels.derivatives import DerivativeFamily
from jax import lax

IMPLEMENTATIONS = ("xla", "pallas", "pallas_interpret", "pallas_tpu", "pallas_tpu_interpret")
# TPU kernels (geolrm_kernels.tpu, docs/tpu.md); "pallas_tpu_interpret" runs them in the Pallas interpreter (tests).
TPU_IMPLEMENTATIONS = ("pallas_tpu", "pallas_tpu_interpret")
# What implementation=None runs on GPU (fwd+bwd at the model's shapes on an H100: Pallas 37.1 ms, XLA 95.9 ms;
# docs/kernels.md).
GPU_DEFAULT_IMPLEMENTATION = "pallas"


def validate_inputs(value, reference_points, offsets, attention_weights, spatial_shapes, view_mask, query_mask):
    """Checks shapes against the contract; returns (spatial_shapes as a tuple of int pairs, combined mask).

    The combined mask is (B, V, Q) bool (view_mask & query_mask), or None when neither is given.
    """
    try:
        shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spatial_shapes must be a static sequence of (h, w) pairs, got {spatial_shapes!r}") from e
    if value.ndim != 5:
        raise ValueError(f"value must be (B, V, L, H, C), got shape {value.shape}")
    b, v, length, heads, _ = value.shape
    if length != sum(h * w for h, w in shapes):
        raise ValueError(f"value L={length} != sum of h*w over spatial_shapes {shapes}")
    if reference_points.ndim != 4 or reference_points.shape[:2] != (b, v) or reference_points.shape[3] != 2:
        raise ValueError(f"reference_points must be (B={b}, V={v}, Q, 2), got {reference_points.shape}")
    q = reference_points.shape[2]
    nl = len(shapes)
    if offsets.ndim != 6 or offsets.shape[:4] != (b, q, heads, nl) or offsets.shape[5] != 2:
        raise ValueError(f"offsets must be (B={b}, Q={q}, H={heads}, NL={nl}, P, 2), got {offsets.shape}")
    p = offsets.shape[4]
    if attention_weights.shape != (b, q, heads, nl, p):
        raise ValueError(f"attention_weights must be {(b, q, heads, nl, p)}, got {attention_weights.shape}")
    mask = None
    if view_mask is not None:
        if view_mask.shape != (b, v):
            raise ValueError(f"view_mask must be (B={b}, V={v}), got {view_mask.shape}")
        mask = jnp.broadcast_to(view_mask.astype(bool)[:, :, None], (b, v, q))
    if query_mask is not None:
        if query_mask.shape != (b, q):
            raise ValueError(f"query_mask must be (B={b}, Q={q}), got {query_mask.shape}")
        qm = jnp.broadcast_to(query_mask.astype(bool)[:, None, :], (b, v, q))
        mask = qm if mask is None else mask & qm
    return shapes, mask


@dataclasses.dataclass(frozen=True)
class _Spec:
    implementation: str
    spatial_shapes: tuple
    config: DeformableConfig


def _unpack(spec, xs, aux):
    value, reference_points, offsets, attention_weights = xs
    mask, order = (aux[0], aux[1] if len(aux) > 1 else None)
    return value, reference_points, offsets, attention_weights, mask, spec.spatial_shapes, order


def _kernel_forward(spec, xs, aux):
    value, reference_points, offsets, attention_weights, mask, shapes, order = _unpack(spec, xs, aux)
    if spec.implementation == "xla":
        return (reference_forward(value, reference_points, offsets, attention_weights, mask, shapes),)
    if spec.implementation in TPU_IMPLEMENTATIONS:  # TPU (Mosaic) kernels: geolrm_kernels.tpu
        from geolrm_kernels.tpu import deformable_forward

        interpret = "hlo" if spec.implementation == "pallas_tpu_interpret" else False
        return (deformable_forward.forward(value, reference_points, offsets, attention_weights, mask, shapes, order,
                                           interpret=interpret, config=spec.config.tpu),)
    return (forward_triton.forward(value, reference_points, offsets, attention_weights, mask, shapes, order,
                                   config=spec.config, interpret=spec.implementation == "pallas_interpret"),)


def _kernel_backward(spec, xs, aux, saved, cotangents):
    value, reference_points, offsets, attention_weights, mask, shapes, order = _unpack(spec, xs, aux)
    if spec.implementation == "xla":
        return reference_backward(value, reference_points, offsets, attention_weights, mask, shapes, cotangents[0])
    if spec.implementation in TPU_IMPLEMENTATIONS:
        from geolrm_kernels.tpu import deformable_backward

        interpret = "hlo" if spec.implementation == "pallas_tpu_interpret" else False
        return deformable_backward.backward(value, reference_points, offsets, attention_weights, mask, shapes,
                                            cotangents[0], order, interpret=interpret, config=spec.config.tpu)
    return backward_triton.backward(value, reference_points, offsets, attention_weights, mask, shapes, cotangents[0],
                                    order, config=spec.config, interpret=spec.implementation == "pallas_interpret")


def _output_shapes(spec, xs, aux):
    value, reference_points = xs[0], xs[1]
    return (jax.ShapeDtypeStruct((*value.shape[:2], reference_points.shape[2], *value.shape[3:]), value.dtype),)


# Primal and gradient from the implementation's kernels; forward mode and higher orders from the XLA reference
# (see geolrm_kernels.derivatives). All operands have the scene axis B first, so vmap folds into it.
DEFORMABLE_SAMPLE = DerivativeFamily(
    name="deformable_sample",
    forward=_kernel_forward,
    backward=_kernel_backward,
    reference_forward=lambda spec, xs, aux: (reference_forward(*_unpack(spec, xs, aux)[:6]),),
    reference_backward=lambda spec, xs, aux, cots: reference_backward(*_unpack(spec, xs, aux)[:6], cots[0]),
    output_shapes=_output_shapes,
    differentiable_outputs=(0,),
)


def default_implementation() -> str:
    """GPU -> GPU_DEFAULT_IMPLEMENTATION; TPU -> "pallas_tpu"; CPU and anything else -> "xla"."""
    backend = jax.default_backend()
    if backend == "tpu":
        return "pallas_tpu"
    return GPU_DEFAULT_IMPLEMENTATION if backend in ("gpu", "cuda", "rocm") else "xla"


def _resolve(implementation):
    implementation = implementation or default_implementation()
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or None, got {implementation!r}")
    return implementation


def _combined_mask(reference_points, view_mask, query_mask):
    b, v, q = reference_points.shape[:3]
    mask = jnp.ones((b, v, q), bool)
    if view_mask is not None:
        mask &= view_mask[:, :, None]
    if query_mask is not None:
        mask &= query_mask[:, None, :]
    return mask


def kernel_query_order(reference_points, view_mask=None, query_mask=None, *, implementation=None, config=None):
    """The order in which the kernels visit the queries (speed only; see ``query_order.spatial_query_order``),
    (B, Q) int32, or None where the implementation uses none (XLA). Compute it once and pass it as
    ``query_order=`` to every :func:`deformable_sample` call that shares these reference points and masks, e.g.
    all layers of a transformer: it costs a sort per call."""
    if _resolve(implementation) == "xla":
        return None
    return resolve_query_order(None, reference_points, _combined_mask(reference_points, view_mask, query_mask),
                               (config or DEFAULT_CONFIG).sort_queries)


def deformable_sample(value, reference_points, offsets, attention_weights, spatial_shapes, view_mask=None,
                      query_mask=None, *, implementation=None, query_order=None, config=None):
    """Multi-view deformable bilinear sampling; see the module docstring for shapes and conventions.

    Returns (B, V, Q, H, C) in ``value.dtype``. ``query_order`` (B, Q) int32: the kernels' visiting order
    from :func:`kernel_query_order` (a permutation of the queries; only the speed depends on it), else computed
    here when the implementation uses one. ``config``: the kernels' :class:`DeformableConfig` (default
    ``DEFAULT_CONFIG``).
    """
    shapes, mask = validate_inputs(value, reference_points, offsets, attention_weights, spatial_shapes,
                                   view_mask, query_mask)
    implementation = _resolve(implementation)
    config = config or DEFAULT_CONFIG
    if mask is None:
        mask = jnp.ones(reference_points.shape[:3], bool)
    if query_order is not None and query_order.shape != mask.shape[:1] + mask.shape[2:]:
        raise ValueError(f"query_order must be (B, Q) = {mask.shape[:1] + mask.shape[2:]}, got {query_order.shape}")
    aux = (mask,)
    if implementation != "xla":  # one order for the forward and the backward kernel
        aux += (resolve_query_order(query_order, lax.stop_gradient(reference_points), mask, config.sort_queries),)
    return DEFORMABLE_SAMPLE(_Spec(implementation, shapes, config), (value, reference_points, offsets,
                                                                     attention_weights), aux)[0]


def deformable_sample_reference(value, reference_points, offsets, attention_weights, spatial_shapes,
                                view_mask=None, query_mask=None):
    """Pure-jnp (XLA) deformable sampling with the same contract as :func:`deformable_sample`."""
    return deformable_sample(value, reference_points, offsets, attention_weights, spatial_shapes, view_mask,
                             query_mask, implementation="xla")
