"""Synthetic objects, GObjaverse file conventions, occupancy and view sampling (no dataset build)."""

import os

import numpy as np
import pytest

from geolrm_jax import geometry
from geolrm_jax.data import gobjaverse_io, occupancy, sampling, synthetic


def _primitive(kind: str, params, seed=0):
    rng = np.random.default_rng(seed)
    return synthetic.Primitive(synthetic.KINDS.index(kind), rng.uniform(-0.1, 0.1, 3),
                               synthetic.random_rotation(rng), np.asarray(params, np.float64),
                               rng.uniform(0.2, 1, (2, 3)), 2, 6.0)


def test_camera_json_round_trip():
    rng = np.random.default_rng(1)
    c2w, K = synthetic.gobjaverse_layout(rng)
    for v in (0, 7, 30):
        meta = gobjaverse_io.camera_to_gobjaverse_dict(c2w[v], K[v])
        c2w_back, K_back = geometry.gobjaverse_camera_from_dict(meta)
        np.testing.assert_allclose(c2w_back, c2w[v], atol=1e-6)
        np.testing.assert_allclose(K_back, K[v], atol=1e-6)


def test_layout_orbit_views_are_90_degrees_apart():
    c2w, _ = synthetic.gobjaverse_layout(np.random.default_rng(3))
    centres = c2w[:, :3, 3]
    for k in range(0, 24, 5):
        a, b = centres[k], centres[(k + 6) % 24]
        cos = a[:2] @ b[:2] / np.linalg.norm(a[:2]) / np.linalg.norm(b[:2])
        assert abs(cos) < 1e-5, cos
        np.testing.assert_allclose(a[2], b[2], atol=1e-6)  # same elevation


@pytest.mark.parametrize("kind,params", [("sphere", [0.3, 0, 0]), ("box", [0.2, 0.15, 0.25]),
                                         ("torus", [0.25, 0.08, 0]), ("cylinder", [0.15, 0.25, 0]),
                                         ("capsule", [0.12, 0.2, 0])])
def test_ray_caster_is_exact(kind, params):
    prim = _primitive(kind, params)
    c2w, K = synthetic.gobjaverse_layout(np.random.default_rng(2))
    size = 48
    rgba, depth, normal = synthetic.render_view([prim], c2w[5], K[5], size, supersample=1)
    hit = depth > 0
    assert hit.sum() > 50
    assert np.array_equal(hit, rgba[..., 3] == 255)
    rays = geometry.pixel_rays(c2w[5], K[5], size, size)
    points = np.asarray(rays.origins)[hit] + np.asarray(rays.directions)[hit] * depth[hit][:, None]
    assert np.abs(synthetic.sdf([prim], points.astype(np.float64))).max() < 1e-5  # float32 depth
    # depth is the z-depth: points project back to their own pixel centres
    uv = np.asarray(geometry.project_points(points, c2w[5], K[5]))
    ys, xs = np.nonzero(hit)
    np.testing.assert_allclose(uv[:, 0], (xs + 0.5) / size, atol=1e-4)
    np.testing.assert_allclose(uv[:, 1], (ys + 0.5) / size, atol=1e-4)
    # normals are the SDF gradient
    eps = 1e-5
    grad = np.stack([(synthetic.sdf([prim], points + eps * e) - synthetic.sdf([prim], points - eps * e)) / (2 * eps)
                     for e in np.eye(3)], -1)
    dots = np.sum(grad * normal[hit], -1)
    assert np.median(dots) > 0.9999 and np.mean(dots > 0.99) > 0.9


def test_union_takes_nearest_hit_and_background_is_empty():
    a = _primitive("sphere", [0.2, 0, 0], seed=1)._replace(center=np.array([0.0, 0.0, 0.0]))
    b = _primitive("box", [0.1, 0.1, 0.1], seed=2)._replace(center=np.array([0.3, 0.0, 0.0]), rotation=np.eye(3))
    c2w = np.asarray(geometry.spherical_c2w(0.0, 0.0, 1.6))  # on +x, looking at the origin
    K = np.asarray(geometry.fov_to_intrinsics(49.13))
    _, depth_a, _ = synthetic.render_view([a], c2w, K, 32, 1)
    _, depth_ab, _ = synthetic.render_view([a, b], c2w, K, 32, 1)
    both = (depth_a > 0) & (depth_ab > 0)
    assert np.all(depth_ab[both] <= depth_a[both] + 1e-6)
    assert np.any(depth_ab[both] < depth_a[both] - 0.05)  # the box is in front of the sphere
    # the centre pixel hits the box face at x = 0.4: z-depth 1.2
    np.testing.assert_allclose(depth_ab[16, 16], 1.2, atol=2e-3)
    assert depth_ab[0, 0] == 0


def test_objects_fit_in_unit_cube():
    rng = np.random.default_rng(0)
    for _ in range(50):
        for p in synthetic.random_object(rng):
            b = synthetic.bounding_radius(p.kind, p.params)
            assert np.all(np.abs(p.center) + b <= 0.5 + 1e-9)


def test_exr_round_trip_and_unity_axes(tmp_path):
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(6, 5, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    depth = rng.uniform(0.5, 2.5, (6, 5)).astype(np.float32)
    path = str(tmp_path / "x_nd.exr")
    gobjaverse_io.write_nd_exr(path, normal, depth)
    raw, depth_back = gobjaverse_io.read_nd_exr(path, (6, 5))
    np.testing.assert_array_equal(depth_back, depth)
    # The original reads B, G, R with OpenCV and maps v -> (-v[2], -v[0], v[1]), i.e. (-R, -B, G).
    np.testing.assert_allclose(np.stack([-raw[..., 0], -raw[..., 2], raw[..., 1]], -1), normal, atol=1e-6)
    np.testing.assert_allclose(gobjaverse_io.unity_to_blender_normals(raw), normal, atol=1e-6)
    assert np.all(gobjaverse_io.unity_to_blender_normals(np.zeros((2, 3))) == 0)


def test_clean_depth_dilates_the_near_mask():
    depth = np.full((5, 6), 2.0, np.float32)
    depth[0, 0] = 0.0  # background
    depth[3, 4] = 0.5  # nearer than camera distance - 0.867 = 1.133
    out = gobjaverse_io.clean_depth(depth, camera_distance=2.0)
    expected = np.full((5, 6), 2.0, np.float32)
    expected[0:2, 0:2] = 0
    expected[2:5, 3:6] = 0
    np.testing.assert_array_equal(out, expected)


def test_depth_png_codes_round_trip():
    depth = np.random.default_rng(0).uniform(0, 3.5, (7, 9)).astype(np.float32)
    depth[0] = 0
    data, scale = gobjaverse_io.encode_depth(depth)
    back = gobjaverse_io.decode_depth(data, scale, "t")
    assert np.abs(back - depth).max() <= scale / 2 + 1e-7
    assert np.all(back[0] == 0)


def test_voxelize_rounding_matches_original():
    g = 4
    # (p + 0.5) * 4: 0.5 -> 0 (half to even), 1.5 -> 2, 2.5 -> 2, 4.4 -> clipped to 3, -0.6 -> clipped 0
    points = np.array([[-0.375, -0.125, 0.125], [0.6, -0.65, 0.125]], np.float32)
    idx = occupancy.voxelize(points, g)
    np.testing.assert_array_equal(idx, [[0, 2, 2], [3, 0, 2]])
    dense = occupancy.densify(idx, g)
    assert dense.dtype == np.uint8 and dense.sum() == 2 and dense[0, 2, 2] == 1 and dense[3, 0, 2] == 1
    with pytest.raises(ValueError):
        occupancy.densify(np.array([[0, 0, 4]]), g)


def test_occupancy_from_rendered_depth_is_on_the_surface():
    prim = _primitive("torus", [0.25, 0.08, 0])
    c2w, K = synthetic.gobjaverse_layout(np.random.default_rng(5))
    views = [synthetic.render_view([prim], c2w[v], K[v], 40, 1) for v in range(0, 40, 4)]
    depths = np.stack([gobjaverse_io.clean_depth(d, float(np.linalg.norm(c2w[v * 4, :3, 3])))
                       for v, (_, d, _) in enumerate(views)])
    g = 32
    idx = occupancy.occupancy_indices(depths, c2w[::4], K[::4], g)
    assert idx.dtype == np.uint16 and len(idx) > 100 and len(np.unique(idx, axis=0)) == len(idx)
    centres = idx.astype(np.float64) / g - 0.5  # voxel i covers (i - 0.5, i + 0.5) / g - 0.5
    assert np.abs(synthetic.sdf([prim], centres)).max() <= np.sqrt(3) * 0.5 / g + 1e-6


def test_view_sampling_training_and_eval():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        s = sampling.sample_views(rng, 40)
        assert s.input_views.shape == (7,) and s.target_views.shape == (8,)
        orbit, rand = s.target_views[:4], s.target_views[4:]
        assert np.all(orbit < 24) and np.all(np.diff(np.sort(orbit)) == 6)
        assert len(set(rand.tolist())) == 4 and not set(rand.tolist()) & set(orbit.tolist())
        n_in = int(s.input_mask.sum())
        inputs = s.input_views[:n_in]
        n_orbit = int(np.isin(inputs, orbit).sum())
        assert 1 <= n_orbit <= 4 and 0 <= n_in - n_orbit <= 3
        assert np.all(np.isin(inputs[:n_orbit], orbit)) and np.all(np.isin(inputs[n_orbit:], rand))
        assert s.target_mask.all() and not s.input_mask[n_in:].any()
        counts.add((n_orbit, n_in - n_orbit))
    assert len(counts) == 16  # every (n_orbit, n_random) combination occurs
    e = sampling.sample_views(rng, 40, training=False)
    assert e.input_mask.sum() == 4 and e.target_mask.sum() == 4
    assert not set(e.input_views[:4].tolist()) & set(e.target_views[:4].tolist())


def test_bundled_sample_is_readable_and_in_zero123pp_cameras():
    from geolrm_jax import inputs

    folder = os.path.join(os.path.dirname(geometry.__file__), "assets", "sample")
    files, c2w, K = inputs.read_cameras_json(os.path.join(folder, "cameras.json"))
    assert len(files) == 6
    cams = geometry.zero123pp_cameras()
    np.testing.assert_allclose(c2w, np.asarray(cams.c2w), atol=1e-5)
    np.testing.assert_allclose(K, np.asarray(cams.K), atol=1e-5)
    for f in files:
        rgba = gobjaverse_io.decode_png_rgba(f.read_bytes(), str(f), (256, 256))
        coverage = (rgba[..., 3] > 0).mean()
        assert 0.02 < coverage < 0.6  # an object in every view, transparent around it
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert total <= 1_000_000


def test_edge_supersampling_matches_full_supersampling_alpha():
    rng = np.random.default_rng(np.random.SeedSequence([0, 3]))
    prims = synthetic.random_object(rng)
    c2w, K = synthetic.gobjaverse_layout(rng)
    size, s = 48, 2
    rgba, _, _ = synthetic.render_view(prims, c2w[0], K[0], size, s)
    o, d, _ = synthetic._rays(c2w[0], K[0], size * s, size * s)
    t, _, color, _ = synthetic.cast_rays(prims, o, d)
    coverage = np.isfinite(t).reshape(size, s, size, s).mean((1, 3))
    assert 0 < np.mean((coverage > 0) & (coverage < 1))  # there are partially covered pixels
    np.testing.assert_array_equal(rgba[..., 3], np.round(coverage * 255).astype(np.uint8))
