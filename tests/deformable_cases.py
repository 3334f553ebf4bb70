"""Inputs and checks shared by the deformable-sampling tests (tests/kernels, tests/render/test_transforms_ops.py)."""
import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = ((5, 7), (3, 4))


def make_inputs(seed, b=1, v=2, q=6, heads=2, c=24, shapes=SHAPES, points=2, dtype=jnp.float32, spread=1.3):
    """Random inputs; locations spread beyond [0, 1] so that some points fall outside the image."""
    rng = np.random.default_rng(seed)
    length = sum(h * w for h, w in shapes)
    value = rng.standard_normal((b, v, length, heads, c)).astype(np.float32)
    ref = rng.uniform(-0.1, 1.1, (b, v, q, 2)).astype(np.float32)
    offsets = (rng.standard_normal((b, q, heads, len(shapes), points, 2)) * 0.3 * spread).astype(np.float32)
    logits = rng.standard_normal((b, q, heads, len(shapes) * points))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights = weights.reshape(b, q, heads, len(shapes), points).astype(np.float32)
    return jnp.asarray(value, dtype), jnp.asarray(ref), jnp.asarray(offsets), jnp.asarray(weights)


def naive_numpy(value, ref, offsets, weights, shapes, view_mask=None, query_mask=None):
    """float64, every sample materialized: grid_sample(align_corners=False, padding_mode="zeros")."""
    value, ref, offsets, weights = (np.asarray(a, np.float64) for a in (value, ref, offsets, weights))
    b, v, _, heads, c = value.shape
    q = ref.shape[2]
    out = np.zeros((b, v, q, heads, c))
    start = 0
    for level, (h, w) in enumerate(shapes):
        vmap = value[:, :, start:start + h * w].reshape(b, v, h, w, heads, c)
        start += h * w
        for p in range(offsets.shape[4]):
            loc = ref[:, :, :, None, :] + offsets[:, None, :, :, level, p, :]  # (B, V, Q, H, 2)
            x = loc[..., 0] * w - 0.5
            y = loc[..., 1] * h - 0.5
            x0, y0 = np.floor(x), np.floor(y)
            for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                    xc = np.clip(xi, 0, w - 1).astype(int)
                    yc = np.clip(yi, 0, h - 1).astype(int)
                    bi, vi, _, hi = np.meshgrid(np.arange(b), np.arange(v), np.arange(q), np.arange(heads),
                                                indexing="ij")
                    sample = vmap[bi, vi, yc, xc, hi]  # (B, V, Q, H, C)
                    coef = np.where(inside, wx * wy, 0.0) * weights[:, None, :, :, level, p]
                    out += coef[..., None] * sample
    mask = np.ones((b, v, q), bool)
    if view_mask is not None:
        mask &= np.asarray(view_mask)[:, :, None]
    if query_mask is not None:
        mask &= np.asarray(query_mask)[:, None, :]
    return np.where(mask[..., None, None], out, 0.0)


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert np.all(np.isfinite(a)), "non-finite values"
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


LATTICE_SHAPES = ((8, 8), (4, 4))


def lattice_inputs(seed, v=2, q=5, heads=2, c=24, points=2):
    """Inputs whose sample points all sit >= 0.07 px away from pixel-centre lines at both levels (some off
    the image), so the finite differences of check_grads never straddle a kink of bilinear interpolation.
    """
    rng = np.random.default_rng(seed)
    value, _, _, weights = make_inputs(seed, v=v, q=q, heads=heads, c=c, shapes=LATTICE_SHAPES, points=points)
    cells = rng.integers(-2, 10, (1, v, q, 2))
    ref = ((cells + np.array([0.3, 0.6])) / 8.0).astype(np.float32)  # x8 frac 0.8/0.1, x4 frac 0.65/0.15 ...
    shifts = rng.integers(-2, 3, (1, q, heads, 2, points, 2)) + rng.uniform(-0.03, 0.03, (1, q, heads, 2, points, 2))
    sizes = np.array([[8.0, 8.0], [4.0, 4.0]])[None, None, None, :, None, :]
    offsets = (shifts / sizes).astype(np.float32)  # whole pixels of their own level plus < 0.03 px
    return value, jnp.asarray(ref), jnp.asarray(offsets), weights


def triton_ir(fn, *args):
    """Lowers fn for CUDA (no GPU needed) and returns the Triton IR that pallas_call(debug=True) prints."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    return buffer.getvalue()
