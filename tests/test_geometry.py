"""Camera geometry: conventions of the original GeoLRM, conformance with the fixture, batching and validation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path

from geolrm_jax import geometry


def _random_c2w(rng, n):
    az = rng.uniform(0, 360, n)
    el = rng.uniform(-60, 60, n)
    r = rng.uniform(1.0, 4.0, n)
    return np.asarray(geometry.spherical_c2w(az, el, r))


def test_fixture_cameras_and_ray_embedding():
    inputs = np.load(shared_path("geolrm_small", "inputs.npz"))
    outputs = np.load(shared_path("geolrm_small", "outputs.npz"))
    config = json.loads(shared_path("geolrm_small", "config.json").read_text())
    c2w = geometry.spherical_c2w(config["azimuths"], config["elevations"], config["radius"])
    np.testing.assert_allclose(c2w, inputs["c2ws"][0], atol=1e-6)
    K = geometry.fov_to_intrinsics(np.full(3, config["fov_deg"]))
    np.testing.assert_allclose(K, inputs["Ks"][0], atol=1e-6)

    size = config["image_size"]
    rays = geometry.plucker_embedding(inputs["c2ws"][0], inputs["Ks"][0], size, size)
    ref = outputs["ray_embedding"].transpose(0, 2, 3, 1)
    assert rays.shape == ref.shape
    assert np.abs(rays - ref).max() / np.abs(ref).max() < 1e-5


def test_fixture_reference_points():
    inputs = np.load(shared_path("geolrm_small", "inputs.npz"))
    outputs = np.load(shared_path("geolrm_small", "outputs.npz"))
    uv = geometry.project_points(inputs["xyzs"][:, None], inputs["c2ws"], inputs["Ks"])
    ref = outputs["reference_points_cam"]
    assert uv.shape == ref.shape
    assert np.abs(uv - ref).max() / np.abs(ref).max() < 1e-5


def test_look_at_is_opengl_and_right_handed():
    rng = np.random.default_rng(0)
    c2w = _random_c2w(rng, 16)
    rot = c2w[:, :3, :3]
    np.testing.assert_allclose(np.einsum("nji,njk->nik", rot, rot), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    # The camera looks down -z, towards the origin.
    forward = -rot[:, :, 2]
    to_origin = -c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=-1, keepdims=True)
    np.testing.assert_allclose(forward, to_origin, atol=1e-5)
    # World z-up: the camera's x axis is horizontal, and its y axis points up-ish.
    np.testing.assert_allclose(rot[:, 2, 0], 0.0, atol=1e-6)
    assert np.all(rot[:, 2, 1] > 0)


def test_projection_centre_and_flip():
    c2w = geometry.spherical_c2w(0.0, 0.0, 2.0)  # camera on +x looking at the origin; world +y is its right
    K = geometry.fov_to_intrinsics(50.0)
    uv = geometry.project_points(jnp.array([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]]), c2w, K)
    np.testing.assert_allclose(uv[0], [0.5, 0.5], atol=1e-6)
    # p.z < 0 in front of an OpenGL camera mirrors u; the original's u -> 1 - u flip undoes it, so the
    # camera's right (world +y here) lands at u > 0.5, and up (world +z) at v < 0.5.
    assert uv[1, 0] > 0.5 and abs(uv[1, 1] - 0.5) < 1e-6
    assert uv[2, 1] < 0.5 and abs(uv[2, 0] - 0.5) < 1e-6


def test_rays_pass_through_projected_pixels():
    """A point on the ray through pixel (x, y) projects back to that pixel's centre: rays and uv agree."""
    rng = np.random.default_rng(1)
    c2w = _random_c2w(rng, 3)
    K = geometry.fov_to_intrinsics(np.array([30.0, 40.0, 50.0]))
    h, w = 12, 20
    rays = geometry.pixel_rays(c2w, K, h, w)
    points = rays.origins + 1.3 * rays.directions  # (3, h, w, 3)
    uv = geometry.project_points(points.reshape(3, -1, 3), c2w, K).reshape(3, h, w, 2)
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    np.testing.assert_allclose(uv[..., 0], np.broadcast_to(xs, (3, h, w)), atol=1e-5)
    np.testing.assert_allclose(uv[..., 1], np.broadcast_to(ys[:, None], (3, h, w)), atol=1e-5)
    # The direction through the principal point is the camera's -z axis, unnormalized with length 1 there.
    plucker = geometry.plucker_embedding(c2w, K, h, w)
    moment = np.cross(np.asarray(rays.origins), np.asarray(rays.directions))
    np.testing.assert_allclose(plucker[..., 3:], moment, atol=1e-5)


def test_presets():
    sv3d = geometry.sv3d_cameras()
    assert sv3d.c2w.shape == (21, 4, 4) and sv3d.K.shape == (21, 3, 3)
    centres = np.asarray(sv3d.c2w[:, :3, 3])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=-1), 1.5, atol=1e-5)
    np.testing.assert_allclose(np.degrees(np.arcsin(centres[:, 2] / 1.5)), 10.0, atol=1e-3)
    az = np.degrees(np.arctan2(centres[:, 1], centres[:, 0])) % 360
    np.testing.assert_allclose(np.sort(az), np.arange(21) * 360 / 21, atol=1e-3)
    np.testing.assert_allclose(sv3d.K[:, 0, 0], 0.5 / np.tan(np.radians(39.6 / 2)), rtol=1e-6)

    z123 = geometry.zero123pp_cameras()
    centres = np.asarray(z123.c2w[:, :3, 3])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=-1), 4.0, atol=1e-5)
    np.testing.assert_allclose(np.degrees(np.arcsin(centres[:, 2] / 4.0)), [20, -10] * 3, atol=1e-3)
    np.testing.assert_allclose(np.degrees(np.arctan2(centres[:, 1], centres[:, 0])) % 360, np.arange(30, 360, 60),
                               atol=1e-3)
    np.testing.assert_allclose(z123.K[:, 1, 1], 0.5 / np.tan(np.radians(15.0)), rtol=1e-6)


def test_batched_and_jittable():
    rng = np.random.default_rng(2)
    c2w = _random_c2w(rng, 6).reshape(2, 3, 4, 4)
    K = np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(39.6)), (2, 3, 3, 3))
    points = rng.uniform(-0.5, 0.5, (2, 3, 7, 3)).astype(np.float32)
    plucker = jax.jit(geometry.plucker_embedding, static_argnums=(2, 3))(c2w, K, 8, 8)
    assert plucker.shape == (2, 3, 8, 8, 6)
    per_view = geometry.plucker_embedding(c2w[1, 2], K[1, 2], 8, 8)
    np.testing.assert_allclose(plucker[1, 2], per_view, atol=1e-6)
    uv = jax.jit(geometry.project_points)(points, c2w, K)
    np.testing.assert_allclose(uv[0, 1], geometry.project_points(points[0, 1], c2w[0, 1], K[0, 1]), atol=1e-6)
    w2c = geometry.world_to_camera(c2w)
    np.testing.assert_allclose(w2c @ c2w, np.broadcast_to(np.eye(4), c2w.shape), atol=1e-5)
    assert jnp.all(jnp.isfinite(jax.grad(lambda c: geometry.project_points(points, c, K).sum())(c2w)))


def test_gobjaverse_camera_json(tmp_path):
    c2w = np.asarray(geometry.spherical_c2w(35.0, 20.0, 1.6))
    opencv = c2w @ geometry.FLIP_YZ
    fov = np.radians(39.6)
    meta = {"x": opencv[:3, 0].tolist(), "y": opencv[:3, 1].tolist(), "z": opencv[:3, 2].tolist(),
            "origin": opencv[:3, 3].tolist(), "x_fov": fov, "y_fov": fov}
    path = tmp_path / "00000.json"
    path.write_text(json.dumps(meta))
    read_c2w, read_K = geometry.read_gobjaverse_camera(path)
    np.testing.assert_allclose(read_c2w, c2w, atol=1e-6)
    np.testing.assert_allclose(read_K, geometry.fov_to_intrinsics(39.6), atol=1e-6)

    del meta["y_fov"]
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"00000\.json.*y_fov"):
        geometry.read_gobjaverse_camera(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"00000\.json"):
        geometry.read_gobjaverse_camera(path)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda c, k: c.__setitem__((1, 0, 3), np.nan), "non-finite"),
        (lambda c, k: c.__setitem__((0, slice(0, 3), 0), c[0, :3, 0] * 1.5), "not orthonormal"),
        (lambda c, k: c.__setitem__((0, slice(0, 3), 0), -c[0, :3, 0]), "reflection"),
        (lambda c, k: k.__setitem__((1, 1, 1), -2.0), "focal lengths must be positive"),
        (lambda c, k: k.__setitem__((0, 0, 2), np.inf), "non-finite"),
    ],
)
def test_validate_cameras_names_the_problem(corrupt, message):
    c2w = np.array(geometry.spherical_c2w([0.0, 90.0], [10.0, 10.0], 1.5))
    K = np.array(np.broadcast_to(np.asarray(geometry.fov_to_intrinsics(39.6)), (2, 3, 3)))
    geometry.validate_cameras(c2w, K)
    corrupt(c2w, K)
    with pytest.raises(ValueError, match=message):
        geometry.validate_cameras(c2w, K, source="user.json")
