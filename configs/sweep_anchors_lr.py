"""A sweep over stage 2: where the anchors come from × (learning rate, warmup) pairs (2 × 2 = 4 runs).

`stage2.anchors` is a string axis; `optim.lr` and `optim.warmup_steps` move together (zipit), so a smaller
learning rate gets a shorter warmup:

    geolrm-jax sweep configs/sweep_anchors_lr.py --workdir=runs/anchors                  # print the commands
    geolrm-jax sweep configs/sweep_anchors_lr.py --workdir=runs/anchors --launch --devices=0,1,2,3 \
        --devices-per-run=1 -- --config.data.data_dir=$DATA --config.init_from=runs/stage1
"""
import os

from geolrm_jax.train.defaults import config_from_file


def get_config():
    return config_from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage2.py"))


def get_hyper(hyper):
    return hyper.product([
        hyper.sweep("config.stage2.anchors", ["ground_truth", "proposal"]),
        hyper.zipit([
            hyper.sweep("config.optim.lr", [5e-5, 1e-4]),
            hyper.sweep("config.optim.warmup_steps", [6_000, 12_000]),
        ]),
    ])
