"""The sweep config expands into one `geolrm-jax train` command per point of the product."""
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_launcher():
    spec = importlib.util.spec_from_file_location("launch_sweep", REPO / "tools" / "launch_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_expands_to_product_of_overrides(tmp_path):
    launcher = load_launcher()
    runs = launcher.expand(str(REPO / "configs" / "sweep_lr_points.py"), "runs/sweep", ["--config.seed=3"])
    assert len(runs) == 9
    names = [name for name, _ in runs]
    assert len(set(names)) == 9 and "lr-0.0001_num_points-8" in names
    argv = dict(runs)["lr-0.0001_num_points-8"]
    assert argv[:2] == ["geolrm-jax", "train"]
    assert "--config.optim.lr=0.0001" in argv and "--config.model.reconstruction.num_points=8" in argv
    assert "--workdir=runs/sweep/lr-0.0001_num_points-8" in argv and argv[-1] == "--config.seed=3"


def test_sweep_rejects_unknown_field(tmp_path):
    bad = tmp_path / "bad_sweep.py"
    bad.write_text(
        "import ml_collections\n"
        "def get_config():\n    c = ml_collections.ConfigDict(); c.optim = ml_collections.ConfigDict(dict(lr=1.0))\n"
        "    return c\n"
        "def get_sweep():\n    s = ml_collections.ConfigDict(); s.axes = (('optim.lrr', (1, 2)),); return s\n")
    with pytest.raises(SystemExit, match="optim.lrr"):
        load_launcher().expand(str(bad), "runs")
