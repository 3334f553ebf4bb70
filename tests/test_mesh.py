"""Mesh export: Gaussians placed on a known sphere -> TSDF mesh near that sphere, with the Gaussians' colours."""

import numpy as np
import pytest

pytest.importorskip("trimesh", reason="mesh export needs the 'mesh' extra")
import trimesh  # noqa: E402

from geolrm_jax import export, mesh  # noqa: E402

RADIUS = 0.3
SETTINGS = mesh.MeshSettings(resolution=40, num_views=16, image_size=64, max_faces=3000)
RED, BLUE = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.2, 0.9])


def sphere_gaussians(count: int = 2000, seed: int = 0, center=(0.05, -0.02, 0.03)):
    """Gaussians on a sphere of RADIUS around ``center``: red on the upper half (z > centre), blue below."""
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(count, 3))
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    colours = np.where(normals[:, 2:3] > 0, RED, BLUE)
    spacing = 1.5 * np.sqrt(4 * np.pi * RADIUS**2 / count)
    return mesh.surface_gaussians(np.asarray(center) + RADIUS * normals, normals, colours, spacing)


@pytest.fixture(scope="module")
def sphere_mesh():
    center = np.array([0.05, -0.02, 0.03])
    return center, mesh.gaussians_to_mesh(sphere_gaussians(center=center), SETTINGS)


def test_mesh_lies_on_the_sphere_with_its_colours(sphere_mesh):
    center, m = sphere_mesh
    voxel = (2 * RADIUS) / (SETTINGS.resolution - 1)
    offset = np.linalg.norm(m.vertices - center, axis=-1) - RADIUS
    assert len(m.faces) <= SETTINGS.max_faces and len(m.faces) > 500
    assert np.abs(offset).mean() < 1.5 * voxel and np.abs(offset).max() < 5 * voxel, (offset.mean(), offset.max())
    assert m.is_watertight and abs(m.volume / (4 / 3 * np.pi * RADIUS**3) - 1) < 0.2
    # outward normals: the winding follows the usual convention
    assert np.mean(np.sum(m.vertex_normals * (m.vertices - center), -1) > 0) > 0.95
    rgb = m.visual.vertex_colors[:, :3] / 255.0
    height = m.vertices[:, 2] - center[2]
    np.testing.assert_allclose(rgb[height > 2 * voxel].mean(0), RED, atol=0.05)
    np.testing.assert_allclose(rgb[height < -2 * voxel].mean(0), BLUE, atol=0.05)
    assert np.all(np.abs(rgb[height > 0.3 * RADIUS] - RED).max(-1) < 0.25)  # away from the seam: all red


def test_mesh_files_read_back(sphere_mesh, tmp_path):
    _, m = sphere_mesh
    for name in mesh.MESH_FILES:
        mesh.write_mesh(m, tmp_path / name)
    glb = trimesh.load(tmp_path / "mesh.glb", force="mesh")
    assert glb.vertices.shape == m.vertices.shape and len(glb.faces) == len(m.faces)
    np.testing.assert_array_equal(glb.visual.vertex_colors, m.visual.vertex_colors)
    obj = trimesh.load(tmp_path / "mesh.obj", force="mesh", process=False)
    assert len(obj.faces) == len(m.faces)
    np.testing.assert_allclose(obj.visual.vertex_colors[:, :3], m.visual.vertex_colors[:, :3], atol=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mesh.MESH_FILES)  # no temporary files left
    with pytest.raises(ValueError, match="must be .glb or .obj"):
        mesh.write_mesh(m, tmp_path / "mesh.stl")


def test_transparent_gaussians_raise_a_clear_error():
    g = sphere_gaussians(count=200)
    faint = export.GaussianArrays(g.means, g.scales, g.quats, np.full_like(g.opacities, 0.02), g.rgbs)
    with pytest.raises(mesh.MeshError, match="opacity"):
        mesh.gaussians_to_mesh(faint, SETTINGS)


def test_surface_gaussians_face_their_normals():
    normals = np.array([[0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0], [0.6, 0.0, 0.8]])
    g = mesh.surface_gaussians(np.zeros((4, 3)), normals, np.zeros((4, 3)), spacing=0.1)
    w, x, y, z = g.quats.T
    # third column of the rotation matrix = the disc's thin axis
    axis = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], -1)
    np.testing.assert_allclose(axis, normals, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(g.quats, axis=-1), 1.0, atol=1e-6)
    assert np.all(g.scales[:, 2] < g.scales[:, 0])


@pytest.mark.slow
def test_reconstruct_writes_the_mesh_beside_the_ply(tmp_path, monkeypatch, capsys):
    import functools
    import json
    import pathlib

    from geolrm_jax import inference, reconstruct

    monkeypatch.delenv("GEOLRM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(inference, "BUNDLED_CHECKPOINTS", tmp_path / "no-bundled")
    monkeypatch.setattr(mesh, "MeshSettings", functools.partial(mesh.MeshSettings, num_views=8, image_size=48))
    out = tmp_path / "result"
    rc = reconstruct.main(["-o", str(out), "--video-format", "none", "--no-progress", "--random-weights", "--mesh",
                           "--mesh-resolution", "32"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(["gaussians.ply", "gaussians.splat", "summary.json",
                                                            *mesh.MESH_FILES])
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(glb.faces) > 0 and glb.visual.vertex_colors.shape == (len(glb.vertices), 4)
    # the mesh lies where the Gaussians are
    g = export.read_ply(out / "gaussians.ply")
    low, high = g.means.min(0) - 3 * g.scales.max(), g.means.max(0) + 3 * g.scales.max()
    assert np.all(glb.vertices >= low - 0.05) and np.all(glb.vertices <= high + 0.05)
    assert "mesh" in json.loads((out / "summary.json").read_text())["timings_s"]
    assert not [p for p in pathlib.Path(tmp_path).iterdir() if p.name.startswith(".")]
