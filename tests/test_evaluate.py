"""`geolrm-jax eval`: view selection, the protocol on an oracle and a wrong predictor, the CLI end to end."""

import csv

import numpy as np
import pytest

from geolrm_jax import evaluate, geometry_metrics
from geolrm_jax.data import gobjaverse_io, synthetic
from geolrm_jax.render.gaussians import Gaussians


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    synthetic.write_dataset(str(root), num_objects=1, image_size=32, seed=3, validation_objects=1, supersample=1)
    return root


def test_view_selection():
    assert evaluate.input_view_ids(4) == [0, 6, 12, 18]
    assert evaluate.input_view_ids(5) == [0, 4, 9, 14, 19]
    with pytest.raises(ValueError, match="1..24"):
        evaluate.input_view_ids(25)
    assert evaluate.target_view_ids([0, 6], 40, 4) == [24, 28, 32, 36]
    orbit_only = evaluate.target_view_ids(list(range(0, 24, 2)), 24, 100)
    assert orbit_only == list(range(1, 24, 2))


def test_composite_white_keeps_premultiplied_identity():
    rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4)).astype(np.uint8)
    rgb, alpha = evaluate.composite_white(rgba, 8)
    assert rgb.shape == (8, 8, 3) and alpha.shape == (8, 8)
    full_rgb, full_alpha = evaluate.composite_white(rgba, 16)
    x = rgba / 255.0
    np.testing.assert_allclose(full_rgb, x[..., :3] * x[..., 3:] + 1 - x[..., 3:], atol=1e-6)


def oracle(object_dir, shift=0.0):
    """A 'model' that returns the ground-truth surface as small Gaussians, coloured from the images."""
    views = [gobjaverse_io.read_view(object_dir, v) for v in range(0, 40, 2)]
    points, colours = [], []
    for view in views:
        pts = geometry_metrics.depth_to_points(view.depth[None], view.c2w[None], view.K[None])
        valid = view.depth > 0
        points.append(pts)
        colours.append(view.rgba[..., :3][valid] / 255.0)
    means = np.concatenate(points) + np.float32(shift)
    n = len(means)

    def predict(images, c2w, K):
        assert images.ndim == 4 and c2w.shape == (len(images), 4, 4)
        quats = np.tile(np.array([1.0, 0, 0, 0], np.float32), (n, 1))
        return Gaussians(means[None].astype(np.float32), np.full((1, n, 3), 0.012, np.float32), quats[None],
                         np.full((1, n), 0.95, np.float32), np.concatenate(colours)[None].astype(np.float32))

    return predict


def test_protocol_on_oracle_and_shifted_predictions(dataset):
    object_dir = str(dataset / synthetic.object_name(0))
    kwargs = dict(input_size=28, render_size=32, max_targets=3, num_points=2048)
    good = evaluate.evaluate_object(object_dir, oracle(object_dir), 4, **kwargs)
    bad = evaluate.evaluate_object(object_dir, oracle(object_dir, shift=0.25), 4, **kwargs)
    assert good["chamfer"] < 0.05 and good["fscore"] > 0.95, good
    assert bad["chamfer"] > 0.3 and bad["fscore"] < 0.5, bad
    assert good["psnr"] > 14 and good["psnr"] > bad["psnr"] + 4, (good["psnr"], bad["psnr"])
    assert good["ssim"] > bad["ssim"]
    assert np.isnan(good["lpips"])  # no LPIPS weights given


def test_eval_cli(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GEOLRM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "no-cache"))
    out = tmp_path / "evals"
    # 6 views at 56 px and 32 px renders, as test_reconstruct's run of the sample: compilations are shared.
    rc = evaluate.main([str(dataset), "--num-views", "6", "--max-targets", "2", "--render-size", "32",
                        "--input-size", "56", "--num-points", "512", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "fscore" in printed
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["num_views"] == "6" and rows[0]["object_id"] == synthetic.object_name(0)
    assert np.isfinite(float(rows[0]["psnr"])) and 0 <= float(rows[0]["ssim"]) <= 1
    with open(out / "summary.csv") as f:
        assert [r["objects"] for r in csv.DictReader(f)] == ["1"]
    assert evaluate.main([str(dataset), "--split", "nope", "--out", str(out)]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
