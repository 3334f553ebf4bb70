"""Tests of the splatter (geolrm_jax.render) against the splat_small fixtures and its own references."""
from __future__ import annotations

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from conftest import shared_path
from geolrm_kernels import rasterize
from splat_cases import random_scene

from geolrm_jax.render import projection, tiles
from geolrm_jax.render.gaussians import Gaussians
from geolrm_jax.render.splat import _render_jit, render, render_camera, render_with_retry

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import check_splat  # noqa: E402


@functools.partial(jax.jit, static_argnums=(3, 4))
def _project_and_list(g, c2w, K, size, capacity):
    """Projection + tile lists of one camera (jitted: the tests stay cheap on 2 CPU cores)."""
    cam = projection.camera_from_c2w(c2w, K)
    proj = projection.project_gaussians(g.means, g.scales, g.quats, cam, size, size)
    return proj, tiles.intersect_tiles(proj.means2d, proj.radii, proj.depths, size, size, capacity)


def test_check_splat_fixtures():
    """tools/check_splat.py on ../shared/fixtures/splat_small: every output and gradient within tolerance."""
    fixture_dir = shared_path("splat_small", "case_a.npz").parent
    assert check_splat.main(["--fixture", str(fixture_dir), "--implementation", "xla"]) == 0


def test_check_splat_fails_on_wrong_reference(tmp_path):
    """The checker must exit non-zero when the reference disagrees (here: a perturbed rgb and n_blended)."""
    data = dict(np.load(shared_path("splat_small", "case_a.npz")))
    data["rgb"] = data["rgb"] + 1e-3
    data["n_blended"] = data["n_blended"] + (np.arange(data["n_blended"].size).reshape(data["n_blended"].shape)
                                             == 7)
    np.savez(tmp_path / "case_x.npz", **data)
    rows = check_splat.check_case(tmp_path / "case_x.npz", "xla", 1 << 14, verbose=False, modes=("exact",))
    failed = {name for name, _, _, ok in rows if not ok}
    assert failed == {"rgb", "n_blended mismatches"}


def test_tiled_matches_dense_reference():
    """Tile lists + chunked custom_vjp rasterizer == dense autodiff reference, outputs and VJP (fresh data).

    In the CUDA gradient convention (straight-through 0.99 clamp); the exact one is checked on the fixtures.
    """
    gradient = "cuda"
    g, c2w, K, size = random_scene(1)
    proj, lists = _project_and_list(g, c2w, K, size, 1 << 13)
    feats = rasterize.pack_features(proj.means2d, proj.conics, g.opacities, g.rgbs, proj.depths)
    assert int(lists.overflow) == 0
    cuda = gradient == "cuda"

    def tiled(feats):
        out = rasterize.rasterize(feats, lists.gaussian_ids, lists.tile_start, lists.tile_end, size, size,
                                  cuda_gradient=cuda, implementation="xla")
        img = lambda x: rasterize.tiles_to_image(x, size, size)
        return img(out.color), img(out.weight), img(out.depth), img(out.transmittance), img(out.count)

    def dense(feats):
        return rasterize.rasterize_dense_reference(feats, proj.radii, size, size, cuda_gradient=cuda)[:5]

    got, ref = jax.jit(tiled)(feats), jax.jit(dense)(feats)
    assert int(jnp.max(got[4])) > 3 and np.array_equal(np.asarray(got[4]), np.asarray(ref[4]))
    for a, b in zip(got[:4], ref[:4], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    key = jax.random.PRNGKey(0)
    cots = [jax.random.normal(jax.random.fold_in(key, i), x.shape) for i, x in enumerate(ref[:4])]
    loss = lambda fn: lambda f: sum(jnp.sum(c * o) for c, o in zip(cots, fn(f)[:4], strict=True))
    g_tiled, g_dense = jax.jit(jax.grad(loss(tiled)))(feats), jax.jit(jax.grad(loss(dense)))(feats)
    scale = float(jnp.max(jnp.abs(g_dense)))
    assert scale > 0 and bool(jnp.all(jnp.isfinite(g_tiled)))
    assert float(jnp.max(jnp.abs(g_tiled - g_dense))) <= 1e-4 * scale


def test_pallas_interpret_matches_xla():
    """Pallas kernels (interpret=True on CPU) == pure-JAX path, forward and all gradients, batched 1 x 2 cams."""
    g, c2w, K, size = random_scene(2, num=200, size=32)
    from geolrm_jax.geometry import spherical_c2w

    c2ws = jnp.stack([c2w, spherical_c2w(jnp.float32(200.0), jnp.float32(10.0), 1.5)])[None]
    Ks = jnp.broadcast_to(K, (1, 2, 3, 3))
    batched = Gaussians(*(x[None] for x in g))
    bg = jnp.asarray([0.2, 0.4, 0.6])
    cot = jax.random.normal(jax.random.PRNGKey(3), (1, 2, size, size, 5))

    def loss(gs, c2ws, impl):
        o = render(gs, c2ws, Ks, size, size, bg, capacity=1 << 12, implementation=impl)
        out = jnp.concatenate([o.rgb, o.alpha[..., None], o.depth[..., None]], -1)
        return jnp.sum(out * cot), (out, o.overflow)

    results = {impl: jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)(batched, c2ws, impl)
               for impl in ("xla", "pallas_interpret")}
    (gx, (ox, ovx)), (gp, (op, ovp)) = results["xla"], results["pallas_interpret"]
    assert int(ovx) == 0 and int(ovp) == 0
    assert float(jnp.mean(ox[..., 3])) > 0.05  # the scene is actually visible
    np.testing.assert_allclose(np.asarray(op), np.asarray(ox), atol=1e-5)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gx), strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0 and float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale


def test_overflow_counted_and_retry_recovers():
    """A too-small capacity reports the exact number of dropped intersections; render_with_retry fixes it."""
    g, c2w, K, size = random_scene(4, num=150, size=32)
    _, full = _project_and_list(g, c2w, K, size, 1 << 12)
    total = int(full.num_intersections)
    assert int(full.overflow) == 0 and total > 64
    _, small = _project_and_list(g, c2w, K, size, 64)
    assert int(small.overflow) == total - 64
    batched = Gaussians(*(x[None] for x in g))
    args = (batched, c2w[None, None], K[None, None], size, size, jnp.ones(3))
    dropped = _render_jit(*args, capacity=64, gradient="exact", implementation="xla")
    assert int(dropped.overflow) == total - 64
    out = render_with_retry(*args, capacity=64, gradient="exact", implementation="xla")
    # render_with_retry grows to the next power of two of what is needed; same static args -> cached program.
    grown = int(2 ** np.ceil(np.log2(total)))
    ref = _render_jit(*args, capacity=grown, gradient="exact", implementation="xla")
    assert int(out.overflow) == 0
    np.testing.assert_allclose(np.asarray(out.rgb), np.asarray(ref.rgb), atol=1e-6)
    assert float(jnp.max(jnp.abs(dropped.rgb - ref.rgb))) > 1e-3


def test_tile_lists_sorted_by_tile_then_depth():
    g, c2w, K, size = random_scene(5, num=100, size=48)
    proj, lists = _project_and_list(g, c2w, K, size, 1 << 12)
    ids, start, end = (np.asarray(x) for x in (lists.gaussian_ids, lists.tile_start, lists.tile_end))
    depths, rect = np.asarray(proj.depths), np.asarray(rasterize.tile_rect(proj.means2d, proj.radii, 3, 3))
    visible = np.asarray(proj.radii) > 0
    assert end[-1] == int(lists.num_intersections) and np.all(start[1:] == end[:-1])
    for t in range(9):
        members = ids[start[t]:end[t]]
        assert np.all(np.diff(depths[members]) >= 0)
        tx, ty = t % 3, t // 3
        expected = np.nonzero(visible & (rect[:, 0] <= tx) & (tx < rect[:, 2]) & (rect[:, 1] <= ty)
                              & (ty < rect[:, 3]))[0]
        assert sorted(members.tolist()) == expected.tolist()


def test_culled_and_padded_gaussians_give_no_nan_and_no_contribution():
    """Gaussians behind the camera / padded with opacity 0 render as nothing and get finite (zero) gradients."""
    g, c2w, K, size = random_scene(6, num=60, size=32)
    cam_pos = c2w[:3, 3]
    behind = cam_pos * 1.5  # behind the camera, looking at the origin
    means = g.means.at[:5].set(behind + 0.01 * jnp.arange(15.0).reshape(5, 3))
    opac = g.opacities.at[5:10].set(0.0)
    gs = Gaussians(means, g.scales, g.quats, opac, g.rgbs)
    # Reference: the same scene with the culled ones also at opacity 0 (same shapes, same compiled program).
    ref_scene = Gaussians(means, g.scales, g.quats, opac.at[:5].set(0.0), g.rgbs)

    @jax.jit
    def value_and_grad(gs):
        def loss(gs):
            o = render_camera(*gs, c2w, K, jnp.ones(3), size, size, 1 << 12, implementation="xla")
            return jnp.sum(o.rgb) + jnp.sum(o.depth), o.projected.radii

        return jax.value_and_grad(loss, has_aux=True)(gs)

    (value, radii), grads = value_and_grad(gs)
    (ref_value, _), _ = value_and_grad(ref_scene)
    assert np.all(np.asarray(radii[:5]) == 0) and np.sum(np.asarray(radii[10:]) > 0) > 40
    assert abs(float(value) - float(ref_value)) <= 1e-5 * abs(float(ref_value))
    for leaf in grads:
        assert bool(jnp.all(jnp.isfinite(leaf)))
    for leaf in (grads.means, grads.scales, grads.quats, grads.opacities, grads.rgbs):
        assert float(jnp.max(jnp.abs(leaf[:5]))) == 0.0
    assert float(jnp.max(jnp.abs(grads.means[10:]))) > 0


def test_radix_and_two_key_intersections_agree():
    """The uint32 radix-key lists equal the (tile, depth) two-key sort's, with exact depth ties and overflow;
    with the keys written by the jnp slot owners and by the Pallas key kernel (interpret mode)."""
    g, c2w, K, size = random_scene(7, num=400, size=48)
    g = g._replace(means=g.means.at[:80].set(g.means[80:160]))  # duplicated Gaussians: equal depths
    cam = projection.camera_from_c2w(c2w, K)
    proj = projection.project_gaussians(g.means, g.scales, g.quats, cam, size, size)

    @functools.partial(jax.jit, static_argnums=(0, 1, 2))
    def lists(method, capacity, keys="xla"):
        tiles.KEYS = keys  # read at trace time
        try:
            return tiles.intersect_tiles(proj.means2d, proj.radii, proj.depths, size, size, capacity, method)
        finally:
            tiles.KEYS = None

    full = lists("two_key", 1 << 13)
    total = int(full.num_intersections)
    assert int(full.overflow) == 0 and total > 500
    for capacity in (1 << 13, total // 2):
        b = lists("two_key", capacity)
        for keys in ("xla", "pallas_interpret"):
            for x, y in zip(lists("radix", capacity, keys), b, strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(lists("radix", total // 2).overflow) == total - total // 2
    # Ties really occur among the listed Gaussians (else the test would not exercise the index tie-break).
    assert len(np.unique(np.asarray(proj.depths)[np.asarray(proj.radii) > 0])) < int(np.sum(np.asarray(proj.radii) > 0))
