"""Defaults shared by the configs in configs/ (each config file calls `base_train_config()` and overrides), and
`config_from_file`, which reads one config file from another (sweeps) or from tools."""
import importlib.util
import os

import ml_collections


def config_from_file(spec: str) -> ml_collections.ConfigDict:
    """'path/to/config.py[:arg]' (as ``--config`` takes it) -> that file's ``get_config(arg)``
    (``get_config()`` without an argument)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"config_{os.path.basename(path)[:-3]}", path)
    if module_spec is None or module_spec.loader is None or not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def base_train_config() -> ml_collections.ConfigDict:
    """Training fields common to both stages; see docs/training.md for their meaning."""
    c = ml_collections.ConfigDict()
    c.stage = 1
    c.seed = 0
    c.batch_size = 8                 # global objects per micro-batch (split over all devices)
    c.grad_accum_steps = 1           # micro-batches per optimizer update
    c.num_train_steps = 1000         # optimizer updates
    c.max_consecutive_nonfinite = 20
    c.log_every_steps = 50
    c.image_every_steps = 1000       # 0 = no image summaries
    c.profile_every_steps = 0        # 0 = no profiler traces
    c.eval_every_steps = 0           # 0 = no evaluation; metrics are logged as eval_<name>
    c.eval_split = "validation"
    c.num_eval_batches = 4
    c.init_from = ""                 # previous run's workdir or `geolrm-jax convert` output
    c.init_subtrees = ()             # () = all top-level subtrees

    # dcn_data granules (TPU slices, else hosts/processes; -1 = all) along 'data', each a data × fsdp mesh
    # (docs/pods.md). num_devices: -1 = all devices; else num_devices / process_count of each process's own.
    # batch_local_loss: the loss runs per device under shard_map (sharding.batch_local_loss; docs/pods.md).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, dcn_data=1, min_fsdp_size=2**14, num_devices=-1,
                                            batch_local_loss=False))

    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-4, warmup_steps=500, eta_min_ratio=0.001, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
        grad_clip=10.0, frozen=()))
    c.optim.total_steps = c.get_ref("num_train_steps")

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000, keep_last=3, keep_best=1, best_metric="loss", best_mode="min", async_save=True))

    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator_address="", num_processes=-1, process_id=-1))
    return c
