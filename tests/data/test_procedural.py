"""Procedural objects (geolrm_jax/data/procedural.py) and their batches (procedural_pipeline.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geolrm_jax import geometry
from geolrm_jax.data import procedural as P
from geolrm_jax.data import procedural_pipeline as pp
from geolrm_jax.data import synthetic


def _scene(parts):
    """A Scene of hand-made parts: dicts with kind, center, size and optional rotation, shell, cut."""
    rng = np.random.default_rng(0)
    scene, _ = P.sample_object(rng, "convex")
    n = len(parts)
    f = {k: np.array(v) for k, v in scene._asdict().items()}
    f["valid"] = np.arange(P.MAX_PARTS) < n
    for i, p in enumerate(parts):
        f["kind"][i] = P.PART_KINDS.index(p["kind"])
        f["center"][i] = p["center"]
        f["rotation"][i] = p.get("rotation", np.eye(3))
        f["size"][i] = (list(p["size"]) + [0.0] * 3)[:3]
        f["rounding"][i] = p.get("rounding", 0.0)
        f["shell"][i] = p.get("shell", 0.0)
        f["has_cut"][i] = "cut" in p
        f["cut"][i] = p.get("cut", (0.0, 0.0, 1.0, 0.0))
    return P.Scene(**{k: np.asarray(v, dtype=getattr(scene, k).dtype) for k, v in f.items()})


def test_primitive_distances_are_exact():
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (400, 3)).astype(np.float32)
    cases = {
        "sphere": (dict(size=(0.3,)), np.linalg.norm(x, axis=-1) - 0.3),
        "capsule": (dict(size=(0.1, 0.2)),
                    np.linalg.norm(np.stack([x[:, 0], x[:, 1], x[:, 2] - np.clip(x[:, 2], -0.2, 0.2)], -1), axis=-1)
                    - 0.1),
        "torus": (dict(size=(0.25, 0.05)),
                  np.hypot(np.hypot(x[:, 0], x[:, 1]) - 0.25, x[:, 2]) - 0.05),
    }
    for kind, (spec, expected) in cases.items():
        got = P.sdf(_scene([dict(kind=kind, center=(0, 0, 0), **spec)]), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, err_msg=kind)
    # Box and cylinder: exact inside (distance to the nearest face) and on the face normals outside.
    box = _scene([dict(kind="box", center=(0, 0, 0), size=(0.2, 0.3, 0.1))])
    inside = np.asarray([[0.05, 0.1, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(P.sdf(box, jnp.asarray(inside))), [-0.1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(P.sdf(box, jnp.asarray([[0.4, 0.0, 0.0]]))), [0.2], atol=1e-6)
    cyl = _scene([dict(kind="cylinder", center=(0, 0, 0), size=(0.2, 0.1))])
    np.testing.assert_allclose(np.asarray(P.sdf(cyl, jnp.asarray([[0.0, 0.0, 0.3], [0.3, 0.0, 0.0],
                                                                 [0.3, 0.0, 0.2]]))),
                               [0.2, 0.1, np.hypot(0.1, 0.1)], atol=1e-6)


def test_shell_and_cut_make_an_open_cup():
    cup = _scene([dict(kind="cylinder", center=(0, 0, 0), size=(0.2, 0.2), shell=0.02, cut=(0, 0, 1, 0.17))])
    d = lambda p: float(P.sdf(cup, jnp.asarray([p], jnp.float32))[0])
    assert d((0.0, 0.0, 0.0)) > 0.1  # the inside of a cup is empty
    assert d((0.2, 0.0, 0.0)) < 0  # the wall
    assert d((0.0, 0.0, -0.2)) < 0  # the bottom
    assert d((0.0, 0.0, 0.25)) > 0.05  # no lid
    # A ray down the cup's axis hits the inner bottom, not a lid.
    t, hit = P.trace(cup, jnp.asarray([[0.0, 0.0, 2.0]]), jnp.asarray([[0.0, 0.0, -1.0]]), steps=128)
    assert bool(hit[0]) and abs(float(t[0]) - (2.0 + 0.2 - 0.02)) < 2e-3


def test_sampled_objects_fit_the_volume_and_are_reproducible():
    for i in range(12):
        family = P.FAMILIES[i % 3]
        a, fam = P.sample_object(np.random.default_rng([3, i]), family)
        b, _ = P.sample_object(np.random.default_rng([3, i]), family)
        assert fam == family
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        g = np.linspace(-0.5, 0.5, 9, dtype=np.float32)
        faces = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        border = np.concatenate([np.insert(faces, axis, s, axis=1) for axis in range(3) for s in (-0.5, 0.5)])
        assert float(P.sdf(a, jnp.asarray(border)).min()) > 0, (i, family)  # nothing pokes out of the box
        assert int(P.occupancy(a, 16).sum()) > 0


def test_traced_hits_lie_on_the_surface_and_match_the_analytic_ray_caster():
    """Sphere tracing against synthetic.py's closed-form intersections (a different renderer) for a box and a
    torus: same silhouettes, depth within 1e-3."""
    rng = np.random.default_rng(5)
    rot = P.random_rotation(rng)
    prims = [synthetic.Primitive(1, np.array([0.05, -0.05, 0.0]), rot, np.array([0.2, 0.15, 0.1]),
                                 np.ones((2, 3)), 0, 1.0),
             synthetic.Primitive(2, np.array([-0.15, 0.1, 0.1]), rot.T, np.array([0.15, 0.05, 0.0]),
                                 np.ones((2, 3)), 0, 1.0)]
    scene = _scene([dict(kind="box", center=prims[0].center, size=prims[0].params, rotation=rot),
                    dict(kind="torus", center=prims[1].center, size=prims[1].params, rotation=rot.T)])
    cams = geometry.zero123pp_cameras()
    c2w, K = np.asarray(cams.c2w[:2]), np.asarray(cams.K[:2])
    size = 24
    rgba, depth, normal = P.render_views(scene, jnp.asarray(c2w), jnp.asarray(K), size, 1, 128)
    for v in range(2):
        _, ref_depth, _ = synthetic.render_view(prims, c2w[v], K[v], size, supersample=1)
        got = np.asarray(depth[v])
        assert ((got > 0) == (ref_depth > 0)).mean() > 0.995
        both = (got > 0) & (ref_depth > 0)
        assert both.sum() > 20
        np.testing.assert_allclose(got[both], ref_depth[both], atol=1e-3)
    alpha = np.asarray(rgba[..., 3])
    assert alpha.min() >= 0 and alpha.max() <= 1 and set(np.unique(alpha)) <= {0.0, 1.0}
    n = np.asarray(normal)[alpha > 0]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)


def test_occupancy_marks_the_surface_voxels():
    scene = _scene([dict(kind="sphere", center=(0, 0, 0), size=(0.3,))])
    occ = np.asarray(P.occupancy(scene, 16))
    axis = (np.arange(16) + 0.5) / 16 - 0.5
    r = np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), axis=-1)
    np.testing.assert_array_equal(occ, (np.abs(r - 0.3) <= 0.5 * np.sqrt(3) / 16).astype(np.uint8))


@pytest.fixture(scope="module")
def small_config():
    c = pp.default_procedural_config()
    c.input_size, c.render_size, c.grid_size = 16, 16, 8
    c.input_views, c.target_views, c.steps, c.supersample = 4, 3, 32, 1
    return c


def test_iterator_batches_follow_the_data_contract_and_resume(small_config):
    it = pp.ProceduralIterator(small_config, "train", seed=0, batch_size=2)
    first = next(it)
    state = it.get_state()
    second = next(it)
    shapes = {k: v.shape for k, v in first.items()}
    assert shapes["input_images"] == (2, 4, 16, 16, 3) and shapes["input_c2w"] == (2, 4, 4, 4)
    assert shapes["target_images"] == (2, 3, 16, 16, 3) and shapes["target_depth"] == (2, 3, 16, 16)
    assert shapes["occupancy"] == (2, 8, 8, 8) and first["occupancy"].dtype == np.uint8
    assert first["input_mask"][:, 0].all() and first["target_mask"].all()
    for x in first.values():
        assert np.isfinite(x).all()
    # Targets are colour over the example's background, exactly.
    bg = first["background"][:, None, None, None]
    a = first["target_alpha"][..., None]
    assert np.all(np.where(a == 0, np.isclose(first["target_images"], bg), True))
    # Resume: a fresh iterator set to the saved state yields the same next batch.
    other = pp.ProceduralIterator(small_config, "train", seed=0, batch_size=2)
    other.set_state(state)
    again = next(other)
    for k in second:
        np.testing.assert_array_equal(second[k], again[k], err_msg=k)
    # Validation objects come from another stream, on white, with novel target views only.
    val = next(pp.ProceduralIterator(small_config, "validation", seed=0, batch_size=2))
    assert not np.array_equal(val["occupancy"], first["occupancy"])
    np.testing.assert_array_equal(val["background"], np.ones((2, 3), np.float32))


def test_rigs_give_the_camera_setups_users_feed():
    rng = np.random.default_rng(0)
    c2w, K = pp.input_rig(rng, "zero123pp", 6)
    ref = geometry.zero123pp_cameras()
    np.testing.assert_allclose(c2w, np.asarray(ref.c2w), atol=1e-6)
    np.testing.assert_allclose(K, np.asarray(ref.K), atol=1e-6)
    for rig in ("sv3d", "random"):
        c2w, K = pp.input_rig(rng, rig, 6)
        assert 2 <= len(c2w) <= 6
        geometry.validate_cameras(c2w, K)
        # Every camera looks at the origin.
        forward = -c2w[:, :3, 2]
        to_origin = -c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=-1, keepdims=True)
        np.testing.assert_allclose(np.sum(forward * to_origin, -1), 1.0, atol=1e-5)
    assert jax.tree.structure(pp.random_views(rng, 3)) is not None


def test_iterator_state_reshards_onto_another_process_count(small_config):
    it = pp.ProceduralIterator(small_config, "train", seed=0, batch_size=2)
    states = [{"index": 10}, {"index": 14}]  # two processes
    assert it.reshard_state(states, 0, 4) == {"index": 6}
    assert it.reshard_state(states, 0, 1) == {"index": 24}
