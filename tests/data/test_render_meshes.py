"""`geolrm-jax data render`: trimesh-made meshes rendered by Mitsuba into the GObjaverse layout, built into a
TFDS dataset and read back through the training pipeline; bad meshes get one error line each."""

import json

import numpy as np
import pytest

pytest.importorskip("mitsuba", reason="data render needs the 'render' extra")
trimesh = pytest.importorskip("trimesh", reason="data render needs the 'render' extra")

from geolrm_jax import geometry  # noqa: E402
from geolrm_jax.cli import main as cli_main  # noqa: E402
from geolrm_jax.data import gobjaverse, gobjaverse_io, pipeline, render_meshes, synthetic  # noqa: E402

SIZE = 24


def test_view_matches_the_analytic_sphere():
    radius, center = 0.3, np.array([0.1, -0.05, 0.08])
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    sphere.apply_translation(center)
    sphere.visual.vertex_colors = np.where(sphere.vertices[:, 2:3] > center[2], [230, 20, 20, 255],
                                           [20, 40, 230, 255]).astype(np.uint8)
    mi = render_meshes._mitsuba("scalar_rgb")
    c2w, K = synthetic.gobjaverse_layout(np.random.default_rng(1))
    rgba, depth, normal = render_meshes.render_view(mi, render_meshes.mitsuba_shape(mi, sphere), c2w[5], K[5], 48, 16)
    rays = geometry.pixel_rays(c2w[5], K[5], 48, 48)
    o, d = np.asarray(rays.origins) - center, np.asarray(rays.directions)
    a, b, c = (d * d).sum(-1), (o * d).sum(-1), (o * o).sum(-1) - radius**2
    hit = b * b - a * c > 0
    t = (-b - np.sqrt(np.maximum(b * b - a * c, 0))) / a  # z-depth: the rays' camera-space z is -1
    assert (hit != (depth > 0)).sum() <= 2 and hit.sum() > 100
    both = hit & (depth > 0)
    np.testing.assert_allclose(depth[both], t[both], atol=4e-3)  # icosphere facets
    true_normal = (np.asarray(rays.origins) + t[..., None] * d - center) / radius
    assert np.abs(normal[both] - true_normal[both]).max() < 0.05
    assert np.all(normal[~hit & (depth == 0)] == 0) and np.all(rgba[..., 3][depth == 0] < 255)
    # z up: red above the centre, blue below, in the image too
    upper = both & (np.asarray(rays.origins)[..., 2] + t * d[..., 2] > center[2] + 0.1)
    lower = both & (np.asarray(rays.origins)[..., 2] + t * d[..., 2] < center[2] - 0.1)
    assert np.all(rgba[upper][:, 0] > 2 * rgba[upper][:, 2]) and np.all(rgba[lower][:, 2] > 2 * rgba[lower][:, 0])


def _pixel(view_c2w, K, size, point):
    cam = np.linalg.inv(view_c2w) @ np.append(point, 1.0)
    x = K[0, 2] * size + K[0, 0] * size * cam[0] / -cam[2]
    y = K[1, 2] * size - K[1, 1] * size * cam[1] / -cam[2]
    return int(y), int(x)


def test_textured_gltf_keeps_its_orientation(tmp_path):
    from PIL import Image

    texture = np.zeros((32, 32, 3), np.uint8)
    texture[:16], texture[16:], texture[:, :4] = [220, 30, 30], [30, 30, 220], [30, 200, 30]  # top red, left green
    quad = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]],
                           visual=trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]],
                                                                image=Image.fromarray(texture)), process=False)
    quad.export(tmp_path / "quad.glb")
    mesh = render_meshes.load_mesh(tmp_path / "quad.glb")  # glTF y-up: the quad now stands in the x-z plane
    np.testing.assert_allclose(mesh.bounds, [[-0.5, 0, -0.5], [0.5, 0, 0.5]], atol=1e-6)
    mi = render_meshes._mitsuba("scalar_rgb")
    shape = render_meshes.mitsuba_shape(mi, mesh)
    for azimuth in (-80.0, 100.0):  # the front and the back (two-sided)
        c2w = np.asarray(geometry.spherical_c2w(azimuth, 15.0, 1.6))
        K = np.asarray(geometry.fov_to_intrinsics(synthetic.FOV_DEG))
        rgba, depth, _ = render_meshes.render_view(mi, shape, c2w, K, 48, 8)
        top, bottom, left = (rgba[_pixel(c2w, K, 48, p)][:3].astype(int)
                             for p in ([0.1, 0, 0.25], [0.1, 0, -0.25], [-0.44, 0, 0.1]))
        assert top[0] > 3 * top[2] and bottom[2] > 3 * bottom[0] and left[1] > 2 * left[0], (azimuth, top, bottom, left)
        assert top[0] > 80  # lit: neither black (a back face) nor darkened twice by the base-colour factor


def _meshes(folder):
    folder.mkdir()
    box = trimesh.creation.box(extents=(0.6, 0.4, 0.3))
    box.visual.face_colors = np.tile([[200, 120, 40, 255]], (len(box.faces), 1))
    box.export(folder / "crate.glb")
    torus = trimesh.creation.torus(major_radius=2.0, minor_radius=0.7, major_sections=24, minor_sections=12)
    torus.export(folder / "ring.obj")
    (folder / "broken.glb").write_bytes(b"glTF not really")
    (folder / "empty.obj").write_text("# nothing here\n")
    fin = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], [[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    fin.export(folder / "fins.ply")
    trimesh.creation.icosphere(subdivisions=3).export(folder / "huge.stl")
    (folder / "notes.txt").write_text("not a mesh")


def test_render_build_and_read_back(tmp_path, capsys):
    _meshes(tmp_path / "meshes")
    root = tmp_path / "layout"
    argv = ["data", "render", str(tmp_path / "meshes"), "-o", str(root), "--size", str(SIZE), "--spp", "4",
            "--validation", "1", "--max-faces", "1000"]
    assert cli_main(argv) == 1  # some meshes were bad
    err = capsys.readouterr().err
    for line in ("broken.glb: cannot read mesh", "empty.obj: the mesh has no triangles",
                 "fins.ply: non-manifold: 1 edges", "huge.stl: 1280 faces exceed --max-faces 1000"):
        assert line in err, err
    errors = json.loads((root / "render_errors.json").read_text())
    assert len(errors) == 4 and all(e["file"].endswith(("glb", "obj", "ply", "stl")) for e in errors)
    assert gobjaverse_io.read_object_list(root / "object_list.json") == {"train": ["user/crate"],
                                                                          "validation": ["user/ring"]}
    assert not list(root.glob("user/.*"))  # no temporary folders left

    views = gobjaverse_io.read_object(str(root / "user" / "crate"), image_size=SIZE)
    rgba = np.stack([v.rgba for v in views])
    assert rgba[..., 3].max() == 255 and (rgba[..., 3] == 0).mean() > 0.3
    # the box's sRGB face colour (200, 120, 40), shaded: orange everywhere it is fully covered
    full = rgba[rgba[..., 3] == 255][:, :3].astype(float)
    assert np.all(full[:, 0] > full[:, 1]) and np.all(full[:, 1] > full[:, 2])
    box_half = np.array([0.5, 0.5 * 0.4 / 0.6, 0.5 * 0.3 / 0.6])  # glTF y-up -> z-up: (x, y, z) -> (x, -z, y)
    box_half = box_half[[0, 2, 1]]
    from geolrm_jax import geometry_metrics

    points = geometry_metrics.depth_to_points(np.stack([v.depth for v in views]), np.stack([v.c2w for v in views]),
                                              np.stack([v.K for v in views]))
    assert len(points) > 500 and np.abs(np.abs(points) - box_half).min(-1).max() < 0.02

    # a second run keeps what exists
    assert cli_main(["data", "render", str(tmp_path / "meshes" / "crate.glb"), "-o", str(root)]) == 0
    assert "exists, kept" in capsys.readouterr().out

    data_dir = gobjaverse.build_gobjaverse(str(tmp_path / "tfds"), str(root), image_size=SIZE, grid_size=16)
    config = pipeline.default_data_config()
    config.data_dir, config.input_size, config.render_size, config.grid_size = data_dir, 28, 16, 16
    config.num_workers = 0
    it = pipeline.make_iterator(config, "train", seed=0, batch_size=1, process_index=0, process_count=1)
    batch = next(it)
    assert batch["input_images"].shape == (1, 7, 28, 28, 3) and batch["target_depth"].shape == (1, 8, 16, 16)
    assert batch["target_alpha"].max() == 1.0 and batch["target_depth"].max() > 1.0
    assert batch["occupancy"].sum() > 10 and it.metrics()["data/bad_examples"] == 0


def test_missing_input_is_one_line(tmp_path, capsys):
    assert render_meshes.main([str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    line = f"geolrm-jax data render: error: {tmp_path / 'nope'}: no such file or folder"
    assert capsys.readouterr().err.strip() == line
