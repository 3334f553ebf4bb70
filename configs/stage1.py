"""Paper stage 1: train the proposal network (occupancy) — lr 2e-4, warmup 500, 50k steps, clip 10.0.

geolrm-jax train --config=configs/stage1.py --workdir=runs/stage1 --config.data.data_dir=<built dataset>
"""
import ml_collections

from geolrm_jax.data.pipeline import default_data_config
from geolrm_jax.model.config import official_model_config
from geolrm_jax.train.defaults import base_train_config


def get_config() -> ml_collections.ConfigDict:
    c = base_train_config()
    c.stage = 1
    c.batch_size = 8                  # global objects per update
    c.num_train_steps = 50_000
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 500
    c.optim.grad_clip = 10.0
    c.optim.frozen = ("reconstruction",)   # initialized (the checkpoint holds a full model) but not trained
    c.model = official_model_config()
    c.model.dtype = "bfloat16"        # compute; params stay float32
    c.model.remat = True              # per transformer layer
    c.model.scan_unroll = 1           # layer loop as a scan (what the training benchmarks measured)
    c.model.attention_over_heads = False  # the original's bf16 (flash-attention) path, used in its training
    c.data = default_data_config()
    c.loss = ml_collections.ConfigDict(dict(bce=1.0, affinity=1.0))
    c.checkpoint.best_metric = "loss"
    c.image_every_steps = 1000
    return c
