"""fp32 atomic add with relaxed memory ordering for Pallas Triton kernels (gradient accumulation in the
deformable-sampling backward's d_value and the rasterizer backward's per-Gaussian gradients).

``plgpu.atomic_add`` lowers to ``tt.atomic_rmw`` with acquire-release semantics (hard-coded in Pallas' Triton
lowering), which orders every atomic against all other memory operations; accumulating a gradient needs no
ordering at all (XLA's scatter and CUDA's atomicAdd are relaxed). A private primitive reuses Pallas' own
abstract-eval, interpret-mode discharge and Triton lowering rules of ``atomic_rmw`` and only rewrites the
``sem`` attribute of the emitted op to RELAXED. These are JAX internals: when they are missing or changed (or
the primitive fails a self-test of its interpret-mode and CUDA lowerings), :func:`relaxed_atomics_status`
says why and :func:`gradient_atomic_add` falls back to the public ``plgpu.atomic_add``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _make_relaxed_atomic_add():
    from jax._src import core as jax_core
    from jax._src import tree_util
    from jax._src.lib.mlir import ir
    from jax._src.lib.triton import dialect as tt_dialect
    from jax._src.pallas.triton import lowering as triton_lowering
    from jax._src.pallas.triton import primitives as triton_primitives
    from jax._src.state import discharge as state_discharge
    from jax._src.state import primitives as state_primitives

    add = triton_primitives.AtomicOpType.ADD
    base_lowering = triton_lowering.triton_lowering_rules[triton_primitives.atomic_rmw_p]
    relaxed = int(tt_dialect.MemSemantic.RELAXED)
    primitive = jax_core.Primitive("deformable_relaxed_atomic_add")
    primitive.def_effectful_abstract_eval(functools.partial(triton_primitives._atomic_abstract_eval,
                                                            atomic_type=add))
    state_discharge.register_discharge_rule(primitive)(
        functools.partial(triton_primitives._atomic_rmw_discharge_rule, atomic_type=add))

    def lowering(ctx, *args_flat, args_tree):
        result = base_lowering(ctx, *args_flat, args_tree=args_tree, atomic_type=add)
        op = result.owner
        if op.name != "tt.atomic_rmw" or "sem" not in op.attributes:
            raise NotImplementedError(f"expected a tt.atomic_rmw op from Pallas' lowering, got {op.name}")
        op.attributes["sem"] = ir.IntegerAttr.get(op.attributes["sem"].type, relaxed)
        return result

    triton_lowering.register_lowering(primitive)(lowering)

    def atomic_add(x_ref, idx, val, *, mask=None):
        """``x_ref[idx] += val`` atomically with relaxed ordering; same arguments as ``plgpu.atomic_add``."""
        ref, transforms = state_primitives.get_ref_and_transforms(x_ref, idx, "atomic_rmw")
        args_flat, args_tree = tree_util.tree_flatten((ref, transforms, val, mask))
        return primitive.bind(*args_flat, args_tree=args_tree)

    return atomic_add


def _self_test(atomic_add):
    """Runs a tiny kernel with ``atomic_add`` in interpret mode and lowers it for CUDA (works without a GPU)."""

    def kernel(x_ref, _, o_ref):
        index = jnp.arange(4, dtype=jnp.int32)
        atomic_add(o_ref, (index,), x_ref[index])

    def call(x, interpret):
        return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((4,), jnp.float32), grid=(2,),
                              input_output_aliases={1: 0}, interpret=interpret,
                              compiler_params=plgpu.CompilerParams(num_warps=1, num_stages=1),
                              )(x, jnp.ones((4,), jnp.float32))

    # Ahead-of-time lowering and a compiled call on numpy input: also runs concretely when first called while
    # a caller's jit is being traced.
    x = np.arange(4, dtype=np.float32)
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    interpreted = jax.jit(functools.partial(call, interpret=True)).trace(spec).lower().compile()
    got = np.asarray(interpreted(x))
    if not np.array_equal(got, 1.0 + 2.0 * x):
        raise ValueError(f"interpret-mode atomic add gave {got}")
    jax.jit(functools.partial(call, interpret=False)).trace(spec).lower(lowering_platforms=("cuda",))


try:
    relaxed_atomic_add = _make_relaxed_atomic_add()
    _IMPORT_ERROR = None
except Exception as _err:  # noqa: BLE001 -- any change of the JAX internals used: public atomics instead
    relaxed_atomic_add, _IMPORT_ERROR = None, _err


@functools.cache
def relaxed_atomics_status() -> tuple[bool, str | None]:
    """(available, reason if not): the private primitive was built and passed :func:`_self_test`."""
    if relaxed_atomic_add is None:
        return False, repr(_IMPORT_ERROR)
    try:
        _self_test(relaxed_atomic_add)
    except Exception as err:  # noqa: BLE001 -- same: fall back to plgpu.atomic_add
        return False, repr(err)
    return True, None


def gradient_atomic_add(relaxed: bool = True):
    """The atomic add for accumulating gradients: :data:`relaxed_atomic_add` where ``relaxed`` and available
    (see :func:`relaxed_atomics_status`), else ``plgpu.atomic_add`` (acquire-release). Same arguments as
    ``plgpu.atomic_add``."""
    return relaxed_atomic_add if relaxed and relaxed_atomics_status()[0] else plgpu.atomic_add
