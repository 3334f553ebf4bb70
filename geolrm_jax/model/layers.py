"""Dense layers that add their bias inside the matrix product.

A bias added after a matrix product is a separate elementwise pass over the output wherever the output goes
straight into a custom call (cuDNN attention, the deformable-sampling kernel) or is split before its consumers,
since XLA cannot fuse it into either. Appending a ones column to the input puts the bias in the product:
[x, 1, 0, …, 0] @ [kernel; bias; 0; …; 0] = x @ kernel + bias. The parameters keep nn.Dense's names, shapes and
initializers (`kernel` (C, F), `bias` (F,)), so checkpoints and initial values are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

BIAS_COLUMNS = 8  # [1, 0, ..., 0] appended to the input: keeps the contraction a multiple of 8


def with_bias_columns(x):
    """x (..., C) -> (..., C + BIAS_COLUMNS) = [x, 1, 0, ..., 0], the input of the layers below."""
    extra = jnp.zeros(x.shape[:-1] + (BIAS_COLUMNS,), x.dtype).at[..., 0].set(1)
    return jnp.concatenate([x, extra], axis=-1)


class DenseParams(nn.Module):
    """The parameters of an nn.Dense, without applying it: returns (kernel (in_features, features), bias
    (features,)) with nn.Dense's names and initializers."""

    features: int

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return kernel, bias


def dense_bias_in_matmul(x_with_bias_columns, params: Sequence[tuple[Any, Any]], dtype):
    """Several Dense layers of the same input as one product: [x, 1, 0…] @ [k_1 … k_n; b_1 … b_n; 0…].

    x_with_bias_columns (..., C + BIAS_COLUMNS); params [(kernel (C, F_i), bias (F_i,))] -> (..., Σ F_i) in
    `dtype`, the outputs side by side in the order of `params`."""
    kernel = jnp.concatenate([k for k, _ in params], axis=1)
    bias = jnp.concatenate([b for _, b in params])
    w = jnp.concatenate([kernel, bias[None].astype(kernel.dtype),
                         jnp.zeros((BIAS_COLUMNS - 1, kernel.shape[1]), kernel.dtype)])
    return jnp.dot(x_with_bias_columns.astype(dtype), w.astype(dtype))


class BiasInMatmulDense(nn.Module):
    """nn.Dense (same parameters `kernel` (C, F) and `bias` (F,), same initializers) on inputs that carry
    their own ones column (`with_bias_columns`): y = [x, 1, 0…] @ [kernel; bias; 0…]."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_with_bias_columns):
        c = x_with_bias_columns.shape[-1] - BIAS_COLUMNS
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return dense_bias_in_matmul(x_with_bias_columns, [(kernel, bias)], self.dtype)
