"""Tiny model + tiny synthetic data for CPU tests and smoke runs. `configs/train_tiny.py:2` selects stage 2.

The dataset is built on first use by geolrm-jax data synthetic / geolrm_jax.data.gobjaverse.build_synthetic;
set data.data_dir to its output.
"""
import ml_collections

from geolrm_jax.data.pipeline import default_data_config
from geolrm_jax.model.config import tiny_model_config
from geolrm_jax.train.defaults import base_train_config


def get_config(stage: str = "1") -> ml_collections.ConfigDict:
    c = base_train_config()
    c.stage = int(stage)
    c.seed = 0
    c.batch_size = 8
    c.grad_accum_steps = 1
    c.num_train_steps = 40
    c.log_every_steps = 5
    c.image_every_steps = 20
    c.mesh.min_fsdp_size = 256
    c.optim.lr = 3e-3 if c.stage == 1 else 2e-3
    c.optim.warmup_steps = 2
    c.optim.grad_clip = 10.0 if c.stage == 1 else 4.0
    c.optim.weight_decay = 0.0
    c.optim.frozen = ("reconstruction",) if c.stage == 1 else ("proposal",)
    c.model = tiny_model_config()
    c.model.dtype = "float32"
    c.model.attention_over_heads = False  # the path the paper configs train with
    c.data = default_data_config()
    c.data.input_size = 28
    c.data.render_size = 32
    c.data.grid_size = c.model.proposal.grid_size
    c.data.num_workers = 0
    c.data.read_threads = 1
    c.checkpoint.every_steps = 20
    c.checkpoint.async_save = False
    if c.stage == 1:
        c.loss = ml_collections.ConfigDict(dict(bce=1.0, affinity=1.0))
    else:
        c.stage2 = ml_collections.ConfigDict(dict(anchors="ground_truth", num_anchors=64, render_capacity=0))
        c.loss = ml_collections.ConfigDict(dict(mse=1.0, lpips=0.0, mask=1.0, depth=0.2, depth_tv=0.05,
                                                lpips_weights=""))
    return c
