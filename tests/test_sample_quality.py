"""The bundled sample (a mug on a saucer path traced by Mitsuba, tools/make_sample.py) and its evaluation truth
(tests/data/sample_truth), and the metrics of geolrm_jax.sample_quality on the truth itself."""

import json

import numpy as np
import pytest

from geolrm_jax import export, reconstruct, sample_quality

VIEWS = (1, 4)  # held-out views scored (of tests/data/sample_truth's 8)
RENDER_SIZE = 128


@pytest.fixture(scope="module")
def truth():
    return sample_quality.load_truth(views=VIEWS, size=RENDER_SIZE)


def test_sample_and_truth_files():
    sample = reconstruct.SAMPLE_DIR
    truth_dir = sample_quality.TRUTH_DIR
    files = [*sample.iterdir(), *truth_dir.iterdir()]
    assert sum(p.stat().st_size for p in files) < 1.5e6
    inputs = json.loads((sample / "cameras.json").read_text())["frames"]
    held_out = json.loads((truth_dir / "cameras.json").read_text())["frames"]
    assert len(inputs) == 6 and len(held_out) == 8
    for frames in (inputs, held_out):
        c2w = np.array([f["c2w"] for f in frames])
        np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3], axis=-1), 4.0, atol=1e-5)  # the Zero123++ rig
        np.testing.assert_allclose([f["K"][0][0] for f in frames], 0.5 / np.tan(np.radians(15)), atol=1e-5)
    positions = lambda frames: np.array([f["c2w"] for f in frames])[:, :3, 3]
    gaps = np.linalg.norm(positions(held_out)[:, None] - positions(inputs)[None], axis=-1)
    assert gaps.min() > 0.5  # every held-out camera is away from every input camera


def test_metrics_of_the_true_surface(truth):
    """Gaussians on the truth's own surface points, with their seen colours, pass; the same moved by a tenth
    of the object's size fail: the metrics measure the object, not the count."""
    points, n = truth.points, len(truth.points)
    colours = np.where(truth.seen[:, None] > 0, truth.seen_rgb, 0.7 * truth.albedo)  # unseen: roughly lit
    on_surface = export.GaussianArrays(points, np.full((n, 3), 0.006, np.float32),
                                       np.tile(np.float32([1, 0, 0, 0]), (n, 1)), np.full(n, 0.95, np.float32),
                                       colours)
    good = sample_quality.score(on_surface, truth)
    assert good["fscore_2"] > 0.97 and good["chamfer"] < 0.01 and good["colour_error"] < 0.05
    assert good["psnr_object"] > good["blank_psnr_object"] + 8 and good["ssim_object"] > good["blank_ssim_object"]
    moved = on_surface._replace(means=points + np.float32([0.1 * truth.extent, 0, 0]))
    bad = sample_quality.score(moved, truth)
    assert bad["fscore_2"] < 0.6 and bad["chamfer"] > 0.02 and bad["psnr_object"] < good["psnr_object"] - 5
    assert not sample_quality.failures(good, {"fscore_5": 0.9}) and sample_quality.failures(bad, {"fscore_5": 0.9})
