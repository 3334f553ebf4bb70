"""Exports: 3DGS PLY (standard and original layouts) round trips through plyfile, .splat layout, videos."""

import numpy as np
import pytest
from plyfile import PlyData

from geolrm_jax import export


def random_gaussians(n=64, seed=0, batch=True, pad=0):
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    fields = export.GaussianArrays(
        means=rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32),
        scales=rng.uniform(0.001, 0.02, (n, 3)).astype(np.float32),
        quats=quats,
        opacities=rng.uniform(0.05, 0.99, n).astype(np.float32),
        rgbs=rng.uniform(0, 1, (n, 3)).astype(np.float32),
    )
    if pad:
        fields = export.GaussianArrays(*(np.concatenate([f, np.zeros((pad,) + f.shape[1:], f.dtype)])
                                         for f in fields))
    if batch:
        fields = export.GaussianArrays(*(f[None] for f in fields))
    return fields


def test_standard_ply_round_trip_and_viewer_conventions(tmp_path):
    g = random_gaussians(pad=7)
    path = tmp_path / "g.ply"
    written = export.write_ply(path, g)
    assert written == 64  # the 7 padded (opacity 0) Gaussians are pruned
    vertex = PlyData.read(str(path))["vertex"]
    names = [p.name for p in vertex.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    src = export.to_numpy_gaussians(g)
    # What a viewer computes: colour = 0.5 + C0 f_dc, opacity = sigmoid, sigma = exp.
    np.testing.assert_allclose(0.5 + export.SH_C0 * np.asarray(vertex["f_dc_1"]), src.rgbs[:, 1], atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(vertex["opacity"]))), src.opacities, rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(vertex["scale_2"])), src.scales[:, 2], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(vertex["rot_0"]), src.quats[:, 0], atol=1e-6)  # w first
    back = export.read_ply(path)
    for name in export.GaussianArrays._fields:
        np.testing.assert_allclose(getattr(back, name), getattr(src, name), rtol=1e-5, atol=1e-6, err_msg=name)


def test_original_ply_keeps_raw_values(tmp_path):
    g = random_gaussians(n=10, batch=False)
    path = tmp_path / "orig.ply"
    export.write_ply(path, g, ply_format="original")
    vertex = PlyData.read(str(path))["vertex"]
    names = [p.name for p in vertex.properties]
    assert names == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                     "rot_0", "rot_1", "rot_2", "rot_3"]
    np.testing.assert_array_equal(np.asarray(vertex["opacity"]), g.opacities)
    np.testing.assert_array_equal(np.asarray(vertex["f_dc_0"]), g.rgbs[:, 0])
    np.testing.assert_array_equal(np.asarray(vertex["scale_1"]), g.scales[:, 1])
    back = export.read_ply(path, ply_format="original")
    np.testing.assert_array_equal(back.means, g.means)


def test_sh_rest_padding(tmp_path):
    path = tmp_path / "sh.ply"
    export.write_ply(path, random_gaussians(n=5), sh_rest=True)
    vertex = PlyData.read(str(path))["vertex"]
    rest = [p.name for p in vertex.properties if p.name.startswith("f_rest_")]
    assert len(rest) == 45 and np.all(np.asarray(vertex["f_rest_44"]) == 0)


def test_splat_layout(tmp_path):
    g = random_gaussians(n=33, batch=False, pad=3)
    path = tmp_path / "g.splat"
    assert export.write_splat(path, g) == 33
    raw = path.read_bytes()
    assert len(raw) == 33 * 32
    # First record by hand: 6 little-endian float32, then RGBA bytes, then rotation bytes.
    importance = np.prod(g.scales[:33].astype(np.float64), -1) * g.opacities[:33]
    first = int(np.argmax(importance))
    values = np.frombuffer(raw[:24], "<f4")
    np.testing.assert_array_equal(values[:3], g.means[first])
    np.testing.assert_array_equal(values[3:], g.scales[first])
    rgba = np.frombuffer(raw[24:28], np.uint8)
    np.testing.assert_array_equal(rgba[:3], np.round(g.rgbs[first] * 255).astype(np.uint8))
    assert rgba[3] == np.round(g.opacities[first] * 255)
    rot = np.frombuffer(raw[28:32], np.uint8)
    np.testing.assert_array_equal(rot, np.clip(np.round(g.quats[first] * 128 + 128), 0, 255).astype(np.uint8))
    back = export.read_splat(path)
    assert np.all(np.diff(np.prod(back.scales.astype(np.float64), -1) * back.opacities) <= 1e-6)
    np.testing.assert_allclose(np.abs(np.sum(back.quats * g.quats[first], -1))[0], 1.0, atol=0.02)


def test_bad_gaussians_rejected():
    g = random_gaussians(n=4, batch=False)
    with pytest.raises(ValueError, match="non-finite"):
        export.to_numpy_gaussians(g._replace(means=np.full((4, 3), np.nan, np.float32)))
    with pytest.raises(ValueError, match="quats"):
        export.to_numpy_gaussians(g._replace(quats=np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match="ply format"):
        export.ply_vertex_array(export.to_numpy_gaussians(g), "inria")


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_video_round_trip(tmp_path, suffix):
    import imageio.v3 as iio

    t = np.linspace(0, 1, 6, dtype=np.float32)[:, None, None, None]
    frames = np.broadcast_to(t, (6, 32, 48, 3)).copy()
    frames[..., 0] = 0.2  # a constant red channel the codec must keep
    path = tmp_path / f"turntable{suffix}"
    export.write_video(path, frames, fps=12)
    back = np.asarray(iio.imread(path, index=None))[..., :3]
    assert back.shape == (6, 32, 48, 3)
    np.testing.assert_allclose(back.astype(np.float32) / 255, frames, atol=0.06)


def test_video_rejects_odd_mp4_and_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="even"):
        export.write_video(tmp_path / "a.mp4", np.zeros((2, 31, 32, 3), np.float32))
    with pytest.raises(ValueError, match="suffix"):
        export.write_video(tmp_path / "a.avi", np.zeros((2, 32, 32, 3), np.float32))
