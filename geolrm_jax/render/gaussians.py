"""The `Gaussians` container shared by the model (producer) and the renderer (consumer).

Conventions (those of GeoLRM and of the 3DGS rasterizer it calls):
  means      (..., N, 3)  world positions.
  scales     (..., N, 3)  activated standard deviations per axis (world units), i.e. after exp/softplus.
  quats      (..., N, 4)  rotation quaternions, real part FIRST (w, x, y, z). The renderer does NOT normalize
                          them: the rotation matrix is the raw quadratic formula, as in the CUDA rasterizer.
  opacities  (..., N)     in (0, 1). Padded Gaussians must have opacity 0; they then render as nothing.
  rgbs       (..., N, 3)  colours in [0, 1].
Leading dims `...` are the scene batch (B); every field shares them.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp


class Gaussians(NamedTuple):
    """A batch of 3D Gaussians; a pytree, so it passes through jit/vmap/grad unchanged."""

    means: jnp.ndarray
    scales: jnp.ndarray
    quats: jnp.ndarray
    opacities: jnp.ndarray
    rgbs: jnp.ndarray

    @property
    def num(self) -> int:
        """N, the number of Gaussians per scene."""
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[:-2])


def validate_gaussians(g: Gaussians) -> None:
    """Raise ValueError naming the field whose shape disagrees with the `Gaussians` contract."""
    batch, n = g.means.shape[:-2], g.means.shape[-2] if g.means.ndim >= 2 else None
    if g.means.ndim < 2 or g.means.shape[-1] != 3:
        raise ValueError(f"Gaussians.means must be (..., N, 3), got {g.means.shape}")
    expected = {
        "scales": (*batch, n, 3),
        "quats": (*batch, n, 4),
        "opacities": (*batch, n),
        "rgbs": (*batch, n, 3),
    }
    for name, shape in expected.items():
        got = tuple(getattr(g, name).shape)
        if got != shape:
            raise ValueError(
                f"Gaussians.{name} must have shape {shape} (from means {g.means.shape}), got {got}"
            )
