"""Every JAX transform through an op whose primal and vector-Jacobian product are kernels.

A ``jax.custom_vjp`` gives reverse mode only: ``jvp``, ``linearize`` and ``jacfwd`` refuse it, and
differentiating its backward differentiates the kernel's ``pallas_call`` itself, which Pallas cannot do
(its JVP rule re-traces the kernel body outside the grid, where ``pl.program_id`` fails an assertion).
A :class:`DerivativeFamily` instead binds two JAX primitives, each with JVP, transpose and batching rules:

- ``F_k(x; u_1, ..., u_k)``: the k-th directional derivative of the op ``f`` at the inputs ``x`` in the
  directions ``u_i`` (k = 0 is the primal ``f(x)``, k = 1 the tangent map), multilinear and symmetric in
  the ``u_i``;
- ``G_m(x, g; v_1, ..., v_m)``: the gradient of ``<g, f(x)>`` differentiated m times in the directions
  ``v_i`` (m = 0 is the vector-Jacobian product), linear in ``g``, multilinear and symmetric in the ``v_i``.

They close under differentiation and transposition (all derivative tensors of ``<g, f>`` are symmetric):

- JVP: ``d F_k = sum_i F_k(.., du_i, ..) + F_{k+1}(x; u, dx)``;
  ``d G_m = G_m(x, dg; v) + sum_i G_m(.., dv_i, ..) + G_{m+1}(x, g; v, dx)``;
- transpose of ``F_k`` in ``u_i``: ``ct -> G_{k-1}(x, ct; u without u_i)``; of ``G_m`` in ``g``:
  ``ct -> F_{m+1}(x; v, ct)``; of ``G_m`` in ``v_i``: ``ct -> G_m(x, g; v with ct for v_i)``;
- vmap: the batch axis is folded into the op's own leading batch axis (every operand and output of a
  family has one), so a batched call is one call of the same kernels.

Reverse mode of the op is the transpose of its tangent map ``F_1``, i.e. ``G_0``: the kernels serve the primal
(``F_0``) and the gradient (``G_0``) exactly as a ``custom_vjp`` would, and training is unchanged. The other
members (``F_{k >= 1}``, ``G_{m >= 1}``) are evaluated as nested ``jax.jvp`` of a pure-jnp reference forward
and reference VJP: forward mode only, so references with ``while_loop``s of data-dependent length are fine,
and no kernel is ever differentiated.

Operand layout of the primitives (flat lists): ``F_k``: x (n_x), aux (n_aux), saved (for k >= 1), u_1 .. u_k
(n_x each); ``G_m``: x, aux, saved, g (one per differentiable output), v_1 .. v_m. ``aux`` are operands
without derivatives (masks, index lists); ``saved`` are the primal outputs that the kernel VJP reads (a cache:
the rules treat them as functions of x, never differentiating through them).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as extend_core
from jax.interpreters import ad, batching, mlir

try:
    from jax.core import ShapedArray
except ImportError:  # a JAX that moved it
    from jax._src.core import ShapedArray


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class DerivativeFamily:
    """An op given by kernels and references; see the module docstring. Hashable by identity (a primitive
    parameter). All callables take the op's static ``spec`` first; xs / aux / outputs are tuples of arrays
    whose leading axis is the op's batch axis.

    forward(spec, xs, aux) -> all outputs (the primal kernel).
    backward(spec, xs, aux, saved, cotangents) -> gradients like xs (the VJP kernel; ``saved`` = the primal
    outputs at ``saved_outputs``; cotangents: one per differentiable output).
    reference_forward(spec, xs, aux) -> differentiable outputs; pure jnp, forward-mode differentiable.
    reference_backward(spec, xs, aux, cotangents) -> gradients; pure jnp, forward-mode differentiable, the
    exact VJP of ``reference_forward``.
    output_shapes(spec, xs, aux) -> jax.ShapeDtypeStruct of every output of ``forward`` (from avals).
    """

    name: str
    forward: Callable
    backward: Callable
    reference_forward: Callable
    reference_backward: Callable
    output_shapes: Callable
    differentiable_outputs: tuple[int, ...]
    saved_outputs: tuple[int, ...] = ()

    def __repr__(self):  # shown in jaxprs, where it is a primitive parameter
        return self.name

    def __post_init__(self):
        object.__setattr__(self, "f_p", _make_primitive(f"{self.name}_f", _f_impl, _f_abstract, _f_jvp,
                                                        _f_transpose))
        object.__setattr__(self, "g_p", _make_primitive(f"{self.name}_g", _g_impl, _g_abstract, _g_jvp,
                                                        _g_transpose))

    def __call__(self, spec, xs, aux):
        """All outputs of the op (a tuple) at inputs ``xs`` with ``aux``; differentiable to any order."""
        xs, aux = tuple(xs), tuple(aux)
        return tuple(self.f_p.bind(*xs, *aux, family=self, spec=spec, k=0, n_x=len(xs), n_aux=len(aux)))

    def saved_from(self, outs):
        return tuple(jax.lax.stop_gradient(outs[i]) for i in self.saved_outputs)


def _make_primitive(name, impl, abstract, jvp, transpose):
    prim = extend_core.Primitive(name)
    prim.multiple_results = True
    prim.def_impl(functools.partial(_eager, impl))
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=True))
    ad.primitive_jvps[prim] = jvp
    ad.primitive_transposes[prim] = transpose
    batching.primitive_batchers[prim] = functools.partial(_batch, prim)
    return prim


def _eager(impl, *operands, **params):
    return _jitted(impl, tuple(sorted(params.items())))(*operands)


@functools.lru_cache(maxsize=256)
def _jitted(impl, params):
    return jax.jit(functools.partial(impl, **dict(params)))


def _split(operands, sizes):
    out, start = [], 0
    for size in sizes:
        out.append(tuple(operands[start:start + size]))
        start += size
    return out


def _f_layout(family, k, n_x, n_aux):
    n_saved = len(family.saved_outputs) if k else 0
    return [n_x, n_aux, n_saved] + [n_x] * k


def _g_layout(family, m, n_x, n_aux):
    return [n_x, n_aux, len(family.saved_outputs), len(family.differentiable_outputs)] + [n_x] * m


def _directional(fn, xs, directions):
    """The len(directions)-th derivative of fn (tuple -> tuple) at xs along the directions, by nested jvp."""
    if not directions:
        return tuple(fn(xs))
    inner = functools.partial(_directional, fn, directions=directions[:-1])
    return tuple(jax.jvp(inner, (xs,), (tuple(directions[-1]),))[1])


# ----------------------------------------------------------------------------------------------- F_k
def _f(family, spec, xs, aux, saved, us):
    return tuple(family.f_p.bind(*xs, *aux, *saved, *(t for u in us for t in u), family=family, spec=spec,
                                 k=len(us), n_x=len(xs), n_aux=len(aux)))


def _f_impl(*operands, family, spec, k, n_x, n_aux):
    xs, aux, saved, *us = _split(operands, _f_layout(family, k, n_x, n_aux))
    if k == 0:
        return tuple(family.forward(spec, xs, aux))
    return _directional(lambda x: family.reference_forward(spec, x, aux), xs, us)


def _f_abstract(*avals, family, spec, k, n_x, n_aux):
    xs, aux, *_ = _split(avals, _f_layout(family, k, n_x, n_aux))
    shapes = family.output_shapes(spec, xs, aux)
    if k:
        shapes = [shapes[i] for i in family.differentiable_outputs]
    return [ShapedArray(s.shape, s.dtype) for s in shapes]


def _is_zero(tangents):
    return all(type(t) is ad.Zero for t in tangents)


def _instantiate(tangents):
    return tuple(ad.instantiate_zeros(t) for t in tangents)


def _sum(terms):
    return tuple(functools.reduce(jnp.add, parts) for parts in zip(*terms, strict=True))


def _f_jvp(primals, tangents, *, family, spec, k, n_x, n_aux):
    layout = _f_layout(family, k, n_x, n_aux)
    xs, aux, saved, *us = _split(primals, layout)
    dxs, _, _, *dus = _split(tangents, layout)
    outs = _f(family, spec, xs, aux, saved, us)
    if k == 0:
        saved = family.saved_from(outs)
    terms = [_f(family, spec, xs, aux, saved, us[:i] + [_instantiate(du)] + us[i + 1:])
             for i, du in enumerate(dus) if not _is_zero(du)]
    if not _is_zero(dxs):
        terms.append(_f(family, spec, xs, aux, saved, us + [_instantiate(dxs)]))
    differentiable = [jax.typeof(outs[i]) for i in family.differentiable_outputs] if k == 0 else \
        [jax.typeof(o) for o in outs]
    tangent = _sum(terms) if terms else tuple(ad.Zero(a.to_tangent_aval()) for a in differentiable)
    if k == 0:
        full = [ad.Zero(jax.typeof(o).to_tangent_aval()) for o in outs]
        for i, t in zip(family.differentiable_outputs, tangent, strict=True):
            full[i] = t
        tangent = full
    return list(outs), list(tangent)


def _undefined_group(groups):
    """Index of the only operand group holding undefined (linear) primals, or None; ValueError if several."""
    found = [i for i, group in enumerate(groups) if any(ad.is_undefined_primal(x) for x in group)]
    if len(found) > 1:
        raise ValueError("a derivative primitive is linear in one operand group at a time")
    return found[0] if found else None


def _check_defined(*groups):
    if any(ad.is_undefined_primal(x) for group in groups for x in group):
        raise ValueError("derivative primitives are not linear in their inputs, aux or saved operands")


def _cotangents_for(group, values):
    return [v if ad.is_undefined_primal(x) else None for x, v in zip(group, values, strict=True)]


def _f_transpose(cts, *operands, family, spec, k, n_x, n_aux):
    xs, aux, saved, *us = _split(operands, _f_layout(family, k, n_x, n_aux))
    _check_defined(xs, aux, saved)
    i = _undefined_group(us)
    result = [None] * (n_x + n_aux + len(saved))
    if i is None:
        return result + [None] * (n_x * k)
    grads = _g(family, spec, xs, aux, saved, _instantiate(cts), tuple(us[:i] + us[i + 1:]))
    for j, u in enumerate(us):
        result += _cotangents_for(u, grads) if j == i else [None] * n_x
    return result


# ----------------------------------------------------------------------------------------------- G_m
def _g(family, spec, xs, aux, saved, cots, vs):
    return tuple(family.g_p.bind(*xs, *aux, *saved, *cots, *(t for v in vs for t in v), family=family, spec=spec,
                                 m=len(vs), n_x=len(xs), n_aux=len(aux)))


def _g_impl(*operands, family, spec, m, n_x, n_aux):
    xs, aux, saved, cots, *vs = _split(operands, _g_layout(family, m, n_x, n_aux))
    if m == 0:
        return tuple(family.backward(spec, xs, aux, saved, cots))
    return _directional(lambda x: family.reference_backward(spec, x, aux, cots), xs, vs)


def _g_abstract(*avals, family, spec, m, n_x, n_aux):
    return [ShapedArray(a.shape, a.dtype) for a in avals[:n_x]]


def _g_jvp(primals, tangents, *, family, spec, m, n_x, n_aux):
    layout = _g_layout(family, m, n_x, n_aux)
    xs, aux, saved, cots, *vs = _split(primals, layout)
    dxs, _, _, dcots, *dvs = _split(tangents, layout)
    outs = _g(family, spec, xs, aux, saved, cots, vs)
    terms = []
    if not _is_zero(dcots):
        terms.append(_g(family, spec, xs, aux, saved, _instantiate(dcots), vs))
    terms += [_g(family, spec, xs, aux, saved, cots, vs[:i] + [_instantiate(dv)] + vs[i + 1:])
              for i, dv in enumerate(dvs) if not _is_zero(dv)]
    if not _is_zero(dxs):
        terms.append(_g(family, spec, xs, aux, saved, cots, vs + [_instantiate(dxs)]))
    tangent = _sum(terms) if terms else tuple(ad.Zero(jax.typeof(o).to_tangent_aval()) for o in outs)
    return list(outs), list(tangent)


def _g_transpose(cts, *operands, family, spec, m, n_x, n_aux):
    xs, aux, saved, cots, *vs = _split(operands, _g_layout(family, m, n_x, n_aux))
    _check_defined(xs, aux, saved)
    i = _undefined_group([cots, *vs])
    result = [None] * (n_x + n_aux + len(saved))
    cts = _instantiate(cts)
    if i is None:
        return result + [None] * (len(cots) + n_x * m)
    if i == 0:
        return result + _cotangents_for(cots, _f(family, spec, xs, aux, saved, list(vs) + [cts])) + \
            [None] * (n_x * m)
    grads = _g(family, spec, xs, aux, saved, cots, vs[:i - 1] + [cts] + vs[i:])
    result += [None] * len(cots)
    for j, v in enumerate(vs):
        result += _cotangents_for(v, grads) if j == i - 1 else [None] * n_x
    return result


# ------------------------------------------------------------------------------------------------ vmap
def _batch(prim, operands, dims, **params):
    """Fold the vmapped axis into the leading (batch) axis of every operand: (n, B, ...) -> (n * B, ...)."""
    n = next(x.shape[d] for x, d in zip(operands, dims, strict=True) if d is not None)
    folded = []
    for x, d in zip(operands, dims, strict=True):
        x = jnp.broadcast_to(x, (n, *x.shape)) if d is None else jnp.moveaxis(x, d, 0)
        folded.append(x.reshape((n * x.shape[1], *x.shape[2:])))
    outs = prim.bind(*folded, **params)
    return [o.reshape((n, o.shape[0] // n, *o.shape[1:])) for o in outs], [0] * len(outs)
