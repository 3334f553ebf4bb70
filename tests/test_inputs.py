"""Input readers: posed folders (our JSON, NeRF transforms.json), SV3D orbits, Zero123++ grids, bad inputs."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from geolrm_jax import geometry, inputs


def write_rgba(path, size=24, value=(255, 0, 0, 128), width=None):
    arr = np.zeros((size, width or size, 4), np.uint8)
    arr[:] = value
    Image.fromarray(arr, "RGBA").save(path)


def make_posed_folder(folder, n=3, size=24):
    folder.mkdir(exist_ok=True)
    cams = geometry.orbit_c2w(n, elevation_deg=20.0, radius=1.5)
    K = np.asarray(geometry.fov_to_intrinsics(39.6))
    files = []
    for i in range(n):
        write_rgba(folder / f"{i:03d}.png", size, (40 * i, 100, 200, 255))
        files.append(f"{i:03d}.png")
    inputs.write_cameras_json(folder / "cameras.json", files, np.asarray(cams), [K] * n)
    return np.asarray(cams), K


def test_rgba_composited_on_white(tmp_path):
    write_rgba(tmp_path / "a.png", value=(255, 0, 0, 128))
    image = inputs.read_image(tmp_path / "a.png")
    a = 128 / 255
    np.testing.assert_allclose(image[0, 0], [1.0, 1 - a, 1 - a], atol=1e-6)


def test_posed_folder_our_json(tmp_path):
    c2w, K = make_posed_folder(tmp_path / "obj", n=3, size=24)
    views = inputs.load_views(tmp_path / "obj", image_size=16)
    assert views.images.shape == (3, 16, 16, 3) and views.images.dtype == np.float32
    np.testing.assert_allclose(views.c2w, c2w, atol=1e-6)
    np.testing.assert_allclose(views.K[1], K, atol=1e-6)
    np.testing.assert_allclose(views.images[2, 8, 8], [80 / 255, 100 / 255, 200 / 255], atol=2e-3)
    sub = inputs.load_views(tmp_path / "obj", image_size=16, num_views=2)
    assert sub.images.shape[0] == 2 and sub.sources[1].endswith("001.png")


def test_transforms_json(tmp_path):
    folder = tmp_path / "nerf"
    folder.mkdir()
    c2w = np.asarray(geometry.orbit_c2w(2, elevation_deg=10.0, radius=2.0))
    angle = math.radians(50.0)
    for i in range(2):
        write_rgba(folder / f"r_{i}.png", 20)
    frames = [{"file_path": f"./r_{i}", "transform_matrix": c2w[i].tolist()} for i in range(2)]
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    views = inputs.load_views(folder, image_size=20)
    np.testing.assert_allclose(views.K[0, 0, 0], 0.5 / math.tan(angle / 2), rtol=1e-6)
    np.testing.assert_allclose(views.K[0, 1, 1], views.K[0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(views.c2w, c2w, atol=1e-6)


def test_transforms_json_pixel_intrinsics(tmp_path):
    folder = tmp_path / "ngp"
    folder.mkdir()
    c2w = np.asarray(geometry.orbit_c2w(1, elevation_deg=0.0, radius=2.0))
    write_rgba(folder / "a.png", 40)
    meta = {"fl_x": 50.0, "fl_y": 60.0, "cx": 21.0, "cy": 19.0, "w": 40, "h": 40,
            "frames": [{"file_path": "a.png", "transform_matrix": c2w[0].tolist()}]}
    (folder / "transforms.json").write_text(json.dumps(meta))
    views = inputs.load_views(folder, image_size=20)
    np.testing.assert_allclose(views.K[0], [[50 / 40, 0, 21 / 40], [0, 60 / 40, 19 / 40], [0, 0, 1]], rtol=1e-6)
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes())
    with pytest.raises(inputs.InputError, match="b.png: image has no camera in .*transforms.json"):
        inputs.load_views(folder, image_size=20)


def test_posed_errors_name_the_file(tmp_path):
    make_posed_folder(tmp_path / "extra", n=2)
    write_rgba(tmp_path / "extra" / "stray.png")
    with pytest.raises(inputs.InputError, match="stray.png: image has no camera"):
        inputs.load_views(tmp_path / "extra", image_size=16)

    make_posed_folder(tmp_path / "broken", n=2)
    (tmp_path / "broken" / "001.png").write_bytes(b"not a png")
    with pytest.raises(inputs.InputError, match="001.png: cannot read image"):
        inputs.load_views(tmp_path / "broken", image_size=16)

    make_posed_folder(tmp_path / "wide", n=2)
    write_rgba(tmp_path / "wide" / "000.png", size=16, width=24)
    with pytest.raises(inputs.InputError, match="000.png: image must be square"):
        inputs.load_views(tmp_path / "wide", image_size=16)

    make_posed_folder(tmp_path / "missing", n=2)
    (tmp_path / "missing" / "001.png").unlink()
    with pytest.raises(inputs.InputError, match="001.png: listed in"):
        inputs.load_views(tmp_path / "missing", image_size=16)

    make_posed_folder(tmp_path / "many", n=3)
    with pytest.raises(inputs.InputError, match="cameras.json: 3 views but the model takes at most 2"):
        inputs.load_views(tmp_path / "many", image_size=16, max_views=2)

    make_posed_folder(tmp_path / "badcam", n=2)
    meta = json.loads((tmp_path / "badcam" / "cameras.json").read_text())
    meta["frames"][1]["c2w"] = [[1, 0, 0], [0, 1, 0]]
    (tmp_path / "badcam" / "cameras.json").write_text(json.dumps(meta))
    with pytest.raises(inputs.InputError, match=r"cameras.json frames\[1\]: field 'c2w'"):
        inputs.load_views(tmp_path / "badcam", image_size=16)


def test_sv3d_frames_and_video(tmp_path):
    import imageio.v3 as iio

    folder = tmp_path / "orbit"
    folder.mkdir()
    frames = np.zeros((21, 32, 32, 3), np.uint8)
    frames[:] = np.arange(21, dtype=np.uint8)[:, None, None, None] * 12
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:02d}.png")
    views = inputs.load_views(folder, image_size=16, kind="sv3d", num_views=7)
    assert views.images.shape == (7, 16, 16, 3)
    np.testing.assert_allclose(views.images[:, 0, 0, 0], np.arange(0, 21, 3) * 12 / 255, atol=1e-5)
    c2w, _ = inputs.preset_cameras("sv3d", 1.5)
    np.testing.assert_allclose(views.c2w, c2w[::3], atol=1e-6)

    video = tmp_path / "orbit.mp4"
    iio.imwrite(video, frames, extension=".mp4", fps=10, codec="libx264", macro_block_size=1, plugin="FFMPEG")
    views = inputs.load_views(video, image_size=16)
    assert views.images.shape == (21, 16, 16, 3)
    np.testing.assert_allclose(views.images[10, 4, 4, 0], 120 / 255, atol=0.03)

    (folder / "20.png").unlink()
    with pytest.raises(inputs.InputError, match="orbit: an SV3D orbit has 21 frames, found 20"):
        inputs.load_views(folder, image_size=16)
    short = tmp_path / "short.mp4"
    iio.imwrite(short, frames[:5], extension=".mp4", fps=10, codec="libx264", macro_block_size=1,
                plugin="FFMPEG")
    with pytest.raises(inputs.InputError, match="short.mp4: an SV3D orbit has 21 frames, the video has 5"):
        inputs.load_views(short, image_size=16)


def test_zero123pp_grid(tmp_path):
    tile = 8
    grid = np.zeros((3 * tile, 2 * tile, 4), np.uint8)
    for index in range(6):
        r, c = divmod(index, 2)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = (index * 40, 0, 0, 255)
    Image.fromarray(grid, "RGBA").save(tmp_path / "grid.png")
    views = inputs.load_views(tmp_path / "grid.png", image_size=tile)
    assert views.images.shape == (6, tile, tile, 3)
    np.testing.assert_allclose(views.images[:, 3, 3, 0], np.arange(6) * 40 / 255, atol=1e-6)
    c2w, K = inputs.preset_cameras("zero123pp", radius=1.5)
    np.testing.assert_allclose(np.linalg.norm(views.c2w[:, :3, 3], axis=-1), 1.5, rtol=1e-6)
    np.testing.assert_allclose(views.K, K)
    four = inputs.load_views(tmp_path / "grid.png", image_size=tile, num_views=4)
    np.testing.assert_allclose(four.images[:, 3, 3, 0], np.array([0, 2, 4, 5]) * 40 / 255, atol=1e-6)

    Image.fromarray(np.zeros((33, 20, 3), np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(inputs.InputError, match="bad.png: a Zero123"):
        inputs.load_views(tmp_path / "bad.png", image_size=tile)


def test_preset_radius_keeps_directions():
    c2w4, _ = inputs.preset_cameras("zero123pp")
    c2w15, _ = inputs.preset_cameras("zero123pp", 1.5)
    np.testing.assert_allclose(np.linalg.norm(c2w4[:, :3, 3], axis=-1), 4.0, rtol=1e-6)
    np.testing.assert_allclose(c2w15[:, :3, :3], c2w4[:, :3, :3])
    np.testing.assert_allclose(c2w15[:, :3, 3] * 4.0 / 1.5, c2w4[:, :3, 3], rtol=1e-5)
