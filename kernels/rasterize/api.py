"""The rasterizer op: alpha compositing of depth-sorted per-tile lists (``reference`` states the rule),
differentiable by every JAX transform.

`rasterize_tiles` binds the derivative primitives of `RASTERIZE` (``geolrm_kernels.derivatives``): ``grad``
runs the implementation's forward and backward, forward mode and higher orders `reference.forward_xla` /
`reference.backward_xla` in forward mode.

Implementations: "xla" (``reference``), "pallas" (the Pallas Triton kernels of ``forward_triton`` /
``backward_triton``, tuned by a `RasterizeConfig`), "pallas_interpret" (the same kernels run by the Pallas
interpreter, any backend, for tests), "pallas_tpu" (the Pallas Mosaic kernels of ``geolrm_kernels.tpu``, block
size in the config's ``tpu`` field; docs/tpu.md), "pallas_tpu_interpret" (those run by the Pallas HLO interpreter,
under every transform: tests); None = "pallas" on GPU, "pallas_tpu" on TPU, XLA elsewhere.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from geolrm_kernels.derivatives import DerivativeFamily
from geolrm_kernels.rasterize.backward_triton import backward_pallas
from geolrm_kernels.rasterize.config import DEFAULT_CONFIG, RasterizeConfig
from geolrm_kernels.rasterize.forward_triton import forward_pallas
from geolrm_kernels.rasterize.reference import PIXELS, TileImage, backward_xla, forward_xla, tiles_grid

IMPLEMENTATIONS = ("xla", "pallas", "pallas_interpret", "pallas_tpu", "pallas_tpu_interpret")
# TPU (Pallas Mosaic) kernels, geolrm_kernels.tpu (docs/tpu.md); "pallas_tpu_interpret": the Pallas interpreter.
TPU_IMPLEMENTATIONS = ("pallas_tpu", "pallas_tpu_interpret")


def _resolve(implementation):
    if implementation is None:
        return {"gpu": "pallas", "tpu": "pallas_tpu"}.get(jax.default_backend(), "xla")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}, got {implementation!r}")
    return implementation


@dataclasses.dataclass(frozen=True)
class _Spec:
    height: int
    width: int
    cuda_gradient: bool
    implementation: str
    config: RasterizeConfig = DEFAULT_CONFIG


def _per_camera(fn, *args):
    """fn of one camera's arrays, mapped over the leading camera axis of every argument."""
    return jax.vmap(fn)(*args)


def _kernel_forward(spec, xs, aux):
    (feats,), (ids, tile_start, tile_end) = xs, aux
    if spec.implementation in TPU_IMPLEMENTATIONS:  # cameras are the kernels' outer grid axis
        from geolrm_kernels.tpu import rasterize_forward

        interpret = "hlo" if spec.implementation == "pallas_tpu_interpret" else False
        return rasterize_forward.forward(feats, ids, tile_start, tile_end, spec.height, spec.width,
                                         interpret=interpret, config=spec.config.tpu)
    if spec.implementation == "xla":
        forward = functools.partial(forward_xla, height=spec.height, width=spec.width)
    else:
        forward = functools.partial(forward_pallas, height=spec.height, width=spec.width,
                                    interpret=spec.implementation == "pallas_interpret", config=spec.config)
    out = _per_camera(forward, feats, ids, tile_start, tile_end)
    return tuple(x.astype(feats.dtype) if i < 4 else x for i, x in enumerate(out))


def _kernel_backward(spec, xs, aux, saved, cotangents):
    (feats,), (ids, tile_start, tile_end), (transmittance, last) = xs, aux, saved
    if spec.implementation in TPU_IMPLEMENTATIONS:
        from geolrm_kernels.tpu import rasterize_backward

        interpret = "hlo" if spec.implementation == "pallas_tpu_interpret" else False
        return (rasterize_backward.backward(feats, ids, tile_start, tile_end, transmittance, last, tuple(cotangents),
                                            spec.height, spec.width, spec.cuda_gradient, interpret=interpret,
                                            config=spec.config.tpu),)

    def backward(feats, ids, tile_start, tile_end, transmittance, last, *cot):
        out = TileImage(None, None, None, transmittance, last, None, None)
        cot = TileImage(*cot, None, None, None)
        if spec.implementation == "xla":
            return backward_xla(feats, ids, tile_start, tile_end, out, cot, spec.height, spec.width,
                                spec.cuda_gradient)
        return backward_pallas(feats, ids, tile_start, tile_end, out, cot, spec.height, spec.width,
                               spec.cuda_gradient, interpret=spec.implementation == "pallas_interpret",
                               config=spec.config)

    return (_per_camera(backward, feats, ids, tile_start, tile_end, transmittance, last, *cotangents),)


def _reference_forward(spec, xs, aux):
    forward = functools.partial(forward_xla, height=spec.height, width=spec.width, cuda_gradient=spec.cuda_gradient)
    return tuple(_per_camera(forward, *xs, *aux)[:4])


def _reference_backward(spec, xs, aux, cotangents):
    def backward(feats, ids, tile_start, tile_end, *cot):
        out = forward_xla(feats, ids, tile_start, tile_end, spec.height, spec.width, spec.cuda_gradient)
        return backward_xla(feats, ids, tile_start, tile_end, out, TileImage(*cot, None, None, None), spec.height,
                            spec.width, spec.cuda_gradient)

    return (_per_camera(backward, *xs, *aux, *cotangents),)


def _output_shapes(spec, xs, aux):
    feats = xs[0]
    grid_x, grid_y = tiles_grid(spec.height, spec.width)
    lead = (feats.shape[0], grid_x * grid_y, PIXELS)
    f, i = (lambda *extra: jax.ShapeDtypeStruct(lead + extra, feats.dtype)), jax.ShapeDtypeStruct(lead, jnp.int32)
    return f(3), f(), f(), f(), i, i, jax.ShapeDtypeStruct(lead, jnp.bool_)


# Primal and gradient from the implementation's forward and backward; forward mode and higher orders from the
# XLA forward and backward (see geolrm_kernels.derivatives). Every operand has a leading camera axis.
RASTERIZE = DerivativeFamily(
    name="splat_rasterize",
    forward=_kernel_forward,
    backward=_kernel_backward,
    reference_forward=_reference_forward,
    reference_backward=_reference_backward,
    output_shapes=_output_shapes,
    differentiable_outputs=(0, 1, 2, 3),  # color, weight, depth, transmittance
    saved_outputs=(3, 4),  # transmittance, last: what the backward reads
)


def rasterize_tiles(feats, ids, tile_start, tile_end, height: int, width: int, cuda_gradient: bool,
                    implementation: str, config: RasterizeConfig | None = None) -> TileImage:
    """Rasterization of one camera's tile lists, differentiable w.r.t. feats by every JAX transform (any order,
    forward and reverse, vmap); see module doc. ``implementation``: one of IMPLEMENTATIONS."""
    spec = _Spec(int(height), int(width), bool(cuda_gradient), _resolve(implementation), config or DEFAULT_CONFIG)
    out = RASTERIZE(spec, (feats[None],), (ids[None], tile_start[None], tile_end[None]))
    return TileImage(*(x[0] for x in out))


def rasterize(feats, ids, tile_start, tile_end, height: int, width: int, *, cuda_gradient: bool = False,
              implementation: str | None = None, config: RasterizeConfig | None = None) -> TileImage:
    """Rasterize one camera. feats (N, 10) from `pack_features`; tile lists from
    `geolrm_jax.render.tiles.intersect_tiles`; ``config``: the Pallas kernels' tuning (default DEFAULT_CONFIG).

    Returns a `TileImage` in tile layout (use `tiles_to_image`); differentiable w.r.t. feats.
    """
    return rasterize_tiles(feats, ids, tile_start, tile_end, height, width, cuda_gradient, implementation, config)
