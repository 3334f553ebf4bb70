"""The TPU (Pallas Mosaic) rasterizer kernels, run in TPU interpret mode with race detection, against the XLA
path: every forward output and the gradient (exact and CUDA-style), on lists with empty tiles, ragged tiles,
tiles longer than one chunk and saturated pixels, and through the whole splatter (projection to pixels)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from geolrm_kernels import rasterize
from geolrm_kernels.rasterize import api as rasterize_api
from geolrm_kernels.tpu import rasterize_backward, rasterize_forward
from geolrm_kernels.tpu.config import RasterizeTpuConfig
from splat_cases import random_scene
from test_tpu_deformable import races_found

from geolrm_jax.render import tiles
from geolrm_jax.render.gaussians import Gaussians
from geolrm_jax.render.splat import render


def _crowded_lists(seed, num=320, size=48):
    """Gaussians crowded into the left third of a 48 x 48 image (3 x 3 tiles): the right tiles are empty, the
    left ones hold more than one chunk of 128 entries, opacities near 0.99 saturate pixels (the T < 1e-4 stop)."""
    rng = np.random.default_rng(seed)
    means = np.stack([rng.uniform(0, 18, num), rng.uniform(0, size, num)], -1)
    sx, sy = rng.uniform(1.0, 4.0, num), rng.uniform(1.0, 4.0, num)
    rho = rng.uniform(-0.6, 0.6, num)
    det = (sx * sy) ** 2 * (1 - rho ** 2)
    conics = np.stack([sy ** 2 / det, -rho * sx * sy / det, sx ** 2 / det], -1)
    opacity = rng.uniform(0.5, 0.99, num)
    feats = np.concatenate([means, conics, opacity[:, None], rng.uniform(0, 1, (num, 3)),
                            rng.uniform(1, 3, (num, 1))], -1)
    feats = jnp.asarray(feats, jnp.float32)
    radii = jnp.asarray(np.ceil(3 * np.maximum(sx, sy)), jnp.int32)
    lists = tiles.intersect_tiles(feats[:, :2], radii, feats[:, 9], size, size, 2048)
    return feats, lists, size


def _reverse_within_tiles(lists):
    """The lists with each tile's entries in reverse order (another valid input: a different compositing)."""
    pos = jnp.arange(lists.gaussian_ids.shape[0])
    tile = jnp.minimum(jnp.searchsorted(lists.tile_end, pos, side="right"), lists.tile_end.shape[0] - 1)
    mirrored = jnp.clip(lists.tile_start[tile] + lists.tile_end[tile] - 1 - pos, 0, pos.shape[0] - 1)
    return jnp.where(pos < lists.tile_end[-1], lists.gaussian_ids[mirrored], 0)


@pytest.mark.parametrize("cuda_gradient", [False, True])
def test_kernels_match_xla_on_crowded_ragged_and_empty_tiles(cuda_gradient):
    """Forward and backward kernels called directly (TPU interpret mode, race detection), 2 cameras (the
    second with every tile's list reversed) against forward_xla / backward_xla."""
    feats, lists, size = _crowded_lists(0)
    counts = np.asarray(lists.tile_end - lists.tile_start)
    assert int(lists.overflow) == 0 and counts.max() > 128 and (counts == 0).any() and (counts % 128 > 0).any()
    ids = jnp.stack([lists.gaussian_ids, _reverse_within_tiles(lists)])
    cams = lambda x: jnp.stack([x, x])
    out = rasterize.TileImage(*rasterize_forward.forward(cams(feats), ids, cams(lists.tile_start),
                                                         cams(lists.tile_end), size, size, interpret=True))
    keys = jax.random.split(jax.random.key(cuda_gradient), 4)
    cot = tuple(jax.random.normal(k, x.shape) for k, x in zip(keys, out[:4], strict=True))
    grads = rasterize_backward.backward(cams(feats), ids, cams(lists.tile_start), cams(lists.tile_end),
                                        out.transmittance, out.last, cot, size, size, cuda_gradient, interpret=True)
    assert races_found() is False  # the detector ran and found none
    for cam in range(2):
        want = rasterize.forward_xla(feats, ids[cam], lists.tile_start, lists.tile_end, size, size)
        assert bool(jnp.any(want.stopped)) and int(jnp.max(want.count)) > 10
        for name, a, b in zip(rasterize.TileImage._fields, out, want, strict=True):
            assert a.dtype == b.dtype, name
            np.testing.assert_allclose(np.asarray(a[cam], np.float64), np.asarray(b, np.float64), rtol=1e-5,
                                       atol=1e-5, err_msg=name)
        want_grad = np.asarray(rasterize.backward_xla(
            feats, ids[cam], lists.tile_start, lists.tile_end, want,
            rasterize.TileImage(*(x[cam] for x in cot), None, None, None), size, size, cuda_gradient))
        grad = np.asarray(grads[cam])
        scale = np.abs(want_grad).max(0)
        assert np.all(scale > 0) and np.all(np.isfinite(grad))
        assert np.all(np.abs(grad - want_grad).max(0) <= 1e-4 * scale)


@pytest.mark.slow
def test_render_end_to_end_matches_xla():
    """The whole splatter (projection, intersection, rasterizer, clamp) with the TPU kernels: forward and the
    gradients of every Gaussian field and of the cameras, 1 scene x 2 cameras."""
    g, c2w, K, size = random_scene(2, num=200, size=32)
    from geolrm_jax.geometry import spherical_c2w

    c2ws = jnp.stack([c2w, spherical_c2w(jnp.float32(200.0), jnp.float32(10.0), 1.5)])[None]
    Ks = jnp.broadcast_to(K, (1, 2, 3, 3))
    batched = Gaussians(*(x[None] for x in g))
    cot = jax.random.normal(jax.random.key(3), (1, 2, size, size, 5))

    def loss(gs, c2ws, impl):
        o = render(gs, c2ws, Ks, size, size, jnp.asarray([0.2, 0.4, 0.6]), capacity=1 << 12, implementation=impl)
        out = jnp.concatenate([o.rgb, o.alpha[..., None], o.depth[..., None]], -1)
        return jnp.sum(out * cot), out

    # Under jit: "pallas_tpu_interpret" runs the kernels in the HLO interpreter.
    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (gt, ot), (gx, ox) = grad(batched, c2ws, "pallas_tpu_interpret"), grad(batched, c2ws, "xla")
    assert float(jnp.mean(ox[..., 3])) > 0.05
    np.testing.assert_allclose(np.asarray(ot), np.asarray(ox), atol=1e-5)
    for a, b in zip(jax.tree.leaves(gt), jax.tree.leaves(gx), strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0 and float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale


def test_default_on_tpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert rasterize_api._resolve(None) == "pallas_tpu"
    with pytest.raises(ValueError, match="pallas_tpu"):
        rasterize_api._resolve("mosaic")


def test_the_op_passes_its_tpu_config_to_the_kernels(monkeypatch):
    """RasterizeConfig.tpu reaches the TPU forward kernel (no module global); chunks of 256 entries give the XLA
    path's image."""
    seen = []
    forward = rasterize_forward.forward
    monkeypatch.setattr(rasterize_forward, "forward", lambda *a, **k: seen.append(k["config"]) or forward(*a, **k))
    config = rasterize.RasterizeConfig(tpu=RasterizeTpuConfig(chunk=256))
    feats, lists, size = _crowded_lists(1)
    args = (feats, lists.gaussian_ids, lists.tile_start, lists.tile_end, size, size)
    got = rasterize.rasterize(*args, implementation="pallas_tpu_interpret", config=config)
    want = rasterize.rasterize(*args, implementation="xla")
    assert seen == [config.tpu]
    np.testing.assert_allclose(np.asarray(got.color), np.asarray(want.color), rtol=1e-5, atol=1e-5)
