"""configs/demo.py: the demo model's size limits and the procedural data it trains on."""
import importlib.util
import pathlib

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(stage):
    spec = importlib.util.spec_from_file_location("demo_config", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(stage)


def test_demo_model_fits_the_shipping_limits():
    from geolrm_jax.model.geolrm import init_variables

    config = _config("2")
    model = config.model
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert count * 2 <= 25 * 2**20, f"{count} parameters exceed 25 MB in 16 bits"
    assert model.input_size >= 256
    assert model.input_size % np.lcm(4, model.encoder.dino_patch) == 0
    for net in (model.proposal, model.reconstruction):
        assert (net.dim // net.heads) % 6 == 0  # 3D RoPE
    assert config.data.source == "procedural"
    assert config.data.grid_size == model.proposal.grid_size == model.reconstruction.grid_size
    assert config.stage2.num_anchors == model.proposal.capacity


def test_stage_one_freezes_the_reconstruction_and_stage_two_the_proposal():
    one, two = _config("1"), _config("2")
    assert one.stage == 1 and one.optim.frozen == ("reconstruction",)
    assert two.stage == 2 and two.optim.frozen == ("proposal",) and two.init_subtrees == ("proposal",)


def test_training_config_check_accepts_procedural_data_and_names_bad_fields(tmp_path):
    import pytest

    from geolrm_jax.train.trainer import check_config

    config = _config("1")
    check_config(config, str(tmp_path / "run"))  # no dataset folder needed
    config.data.rig_weights = (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="data.rig_weights"):
        check_config(config, str(tmp_path / "run"))
    config = _config("1")
    config.data.input_size = 0
    with pytest.raises(ValueError, match="data.input_size"):
        check_config(config, str(tmp_path / "run"))
