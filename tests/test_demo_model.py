"""The shipped demo model reconstructs the bundled sample (a mug on a saucer it never saw, path traced by
Mitsuba): held-out-view PSNR and surface F-score pass the gates below; random and corrupted weights miss them.

The check: ``geolrm-jax reconstruct`` run as a user runs it (no checkpoint named; the bundled demo model), then
``geolrm_jax.sample_quality.score`` of its ``gaussians.ply`` on the held-out views ``VIEWS`` rendered at
``RENDER_SIZE`` px (a subset and size that keep the CPU splatting short), against ``GATES_MIN`` / ``GATES_MAX``.

Setting the gates (after training, once ``geolrm_jax/assets/checkpoints/demo`` is in place), on CPU:

    CKPT=geolrm_jax/assets/checkpoints/demo
    JAX_PLATFORMS=cpu python tools/sample_quality.py --checkpoint $CKPT --views 1 4 --render-size 128 --out trained.json
    JAX_PLATFORMS=cpu python tools/sample_quality.py --random-weights --model-config $CKPT/geolrm_model_config.json \
        --views 1 4 --render-size 128 --out random.json

then for each gated metric: gate = trained - (trained - random) / 3 (for chamfer, lower is better:
trained + (random - trained) / 3), rounded to 2 significant digits towards random. Write them into the block
below, drop the TODO, and run this file (``CI=true pytest -q tests/test_demo_model.py``): the corrupted-weights
case must miss every gate too.
"""

import json
import os
import shutil

import numpy as np
import pytest

from geolrm_jax import export, reconstruct, sample_quality

# ----------------------------------------------------------------------------------------------------------
# Gates. TODO(lead): provisional values (above what random weights score, see the module doc); replace them by
# the values measured on the trained demo model as the module doc says.
GATES_MIN = {"psnr": 17.0, "psnr_object": 15.0, "fscore_5": 0.5}  # TODO(lead)
GATES_MAX = {"chamfer": 0.08}  # TODO(lead)
VIEWS = (1, 4)  # held-out views scored (of tests/data/sample_truth's 8)
RENDER_SIZE = 128
# ----------------------------------------------------------------------------------------------------------

DEMO_CHECKPOINT = reconstruct.BUNDLED_CHECKPOINTS / "demo"


def demo_checkpoint():
    """The shipped checkpoint; missing: FAIL under CI=true (a release must ship it), skip elsewhere."""
    if not (DEMO_CHECKPOINT / "geolrm_model_config.json").is_file():
        message = f"the demo model is missing: {DEMO_CHECKPOINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return DEMO_CHECKPOINT


@pytest.fixture(scope="module")
def truth():
    return sample_quality.load_truth(views=VIEWS, size=RENDER_SIZE)


@pytest.fixture
def only_bundled(tmp_path, monkeypatch):
    """The default weight search finds the bundled model: no $GEOLRM_CHECKPOINT, an empty cache."""
    monkeypatch.delenv("GEOLRM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "empty-cache"))


def reconstruct_and_score(out, truth, capsys, *extra) -> dict:
    """``geolrm-jax reconstruct [extra] -o out`` on the bundled sample, then the sample's metrics; a run that
    ends with nothing to export (no anchor or no Gaussian left) scores as an empty reconstruction."""
    rc = reconstruct.main(["-o", str(out), "--video-format", "none", "--no-progress", *extra])
    if rc != 0:
        error = capsys.readouterr().err
        assert rc == 2 and "nothing written" in error, error
        empty = export.GaussianArrays(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0),
                                      np.zeros((0, 3)))
        return {"exit_code": rc, **sample_quality.score(empty, truth)}
    return sample_quality.score(sample_quality.gaussians_from_folder(out), truth)


def test_gates_are_well_formed():
    assert set(GATES_MIN) >= {"psnr", "fscore_5"}  # the two: held-out-view PSNR and surface F-score
    assert all(isinstance(v, float) and np.isfinite(v) for v in [*GATES_MIN.values(), *GATES_MAX.values()])
    assert sample_quality.failures({"psnr": 30.0, "psnr_object": 30.0, "fscore_5": 1.0, "chamfer": 0.0},
                                   GATES_MIN, GATES_MAX) == []
    missed = sample_quality.failures({"psnr": float("nan"), "psnr_object": 0.0, "chamfer": None}, GATES_MIN, GATES_MAX)
    assert len(missed) == 4  # NaN, too low, missing and None all miss


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


@pytest.mark.slow
def test_the_shipped_model_reconstructs_the_sample(tmp_path, truth, only_bundled, capsys):
    checkpoint = demo_checkpoint()
    from geolrm_jax.model import convert

    config = convert.restore_config(checkpoint)
    convert.check_variables(convert.restore_variables(checkpoint), config, checkpoint)  # loads, fits its config
    metrics = reconstruct_and_score(tmp_path / "out", truth, capsys)
    assert capsys.readouterr().out.startswith(f"model: {reconstruct.DEMO_DESCRIPTION}")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["random_weights"] is False
    assert sample_quality.failures(metrics, GATES_MIN, GATES_MAX) == [], json.dumps(metrics, indent=1)


def _corrupted_copy(checkpoint, dest):
    """The checkpoint with every parameter tensor's entries shuffled (same values, same statistics)."""
    import jax

    from geolrm_jax.model import convert

    variables = convert.restore_variables(checkpoint)
    rng = np.random.default_rng(0)
    shuffle = lambda x: np.asarray(x).reshape(-1)[rng.permutation(np.size(x))].reshape(np.shape(x))
    variables = {**variables, "params": jax.tree.map(shuffle, variables["params"])}
    convert.save_variables(dest, variables)
    shutil.copy(checkpoint / convert.CONFIG_FILE, dest / convert.CONFIG_FILE)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["random", "corrupted"])
def test_untrained_weights_miss_every_gate(tmp_path, truth, only_bundled, capsys, weights):
    if weights == "corrupted":
        extra = ["--checkpoint", str(_corrupted_copy(demo_checkpoint(), tmp_path / "corrupted"))]
    else:
        config = tmp_path / "demo_config.json"
        if (DEMO_CHECKPOINT / "geolrm_model_config.json").is_file():  # the shipped architecture and dtype
            shutil.copy(DEMO_CHECKPOINT / "geolrm_model_config.json", config)
        else:
            from geolrm_jax.model.config import demo_model_config

            config.write_text(demo_model_config().to_json(indent=1))
        extra = ["--random-weights", "--model-config", str(config)]
    metrics = reconstruct_and_score(tmp_path / "out", truth, capsys, *extra)
    missed = sample_quality.failures(metrics, GATES_MIN, GATES_MAX)
    assert len(missed) == len(GATES_MIN) + len(GATES_MAX), json.dumps(metrics, indent=1)
