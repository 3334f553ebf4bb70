"""A sweep over stage 2: learning rate × number of deformable sampling points per level (9 runs).

`get_config()` is the base (configs/stage2.py); `get_hyper(hyper)` returns the points (scenic style), which
`geolrm-jax sweep` turns into `geolrm-jax train` runs with `--config.<field>=<value>` overrides:

    geolrm-jax sweep configs/sweep_lr_points.py --workdir=runs/sweep                     # print the commands
    geolrm-jax sweep configs/sweep_lr_points.py --workdir=runs/sweep --launch --devices=0,1,2,3,4,5,6,7
"""
import os

from geolrm_jax.train.defaults import config_from_file


def get_config():
    return config_from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage2.py"))


def get_hyper(hyper):
    return hyper.product([
        hyper.sweep("optim.lr", [5e-5, 1e-4, 2e-4]),
        hyper.sweep("model.reconstruction.num_points", [4, 8, 16]),
    ])
