"""A sweep over stage 2: learning rate × number of deformable sampling points per level.

`get_config()` is the base (configs/stage2.py); `get_sweep()` lists the axes, expanded as a Cartesian
product by tools/launch_sweep.py into `geolrm-jax train` runs with `--config.<field>=<value>` overrides:

    python tools/launch_sweep.py configs/sweep_lr_points.py --workdir=runs/sweep            # print commands
    python tools/launch_sweep.py configs/sweep_lr_points.py --workdir=runs/sweep --launch   # run them in turn
"""
import importlib.util
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage2.py")
    spec = importlib.util.spec_from_file_location("stage2_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_sweep() -> ml_collections.ConfigDict:
    """Axes of the sweep: (field path, values) pairs, expanded as a Cartesian product."""
    sweep = ml_collections.ConfigDict()
    sweep.axes = (
        ("optim.lr", (5e-5, 1e-4, 2e-4)),
        ("model.reconstruction.num_points", (4, 8, 16)),
    )
    return sweep
