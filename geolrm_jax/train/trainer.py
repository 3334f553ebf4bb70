"""Training loop: `train_and_evaluate(config, workdir)` and the `Trainer` it drives.

The loop is stage-agnostic: a *task* (stages.py) supplies `init_variables`, `loss_fn` and `summary_images`;
the trainer owns the mesh, the sharded jit-compiled step, the optimizer, checkpoints, metrics and logging.
"""
import contextlib
import logging
import math
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from geolrm_jax.train import checkpointing, sharding, steps, writers
from geolrm_jax.train.train_state import TrainState, make_optimizer
from geolrm_jax.train.writers import clu_metrics, parameter_overview, periodic_actions

log = logging.getLogger(__name__)

LAST_VALUE_METRICS = ("learning_rate", "nonfinite_consecutive")


def maybe_initialize_distributed(config) -> None:
    """jax.distributed.initialize when config.distributed.enabled (multi-host); arguments left empty are
    auto-detected by JAX on TPU pods, SLURM and Open MPI."""
    dist = config.get("distributed")
    if not dist or not dist.get("enabled", False) or jax.distributed.is_initialized():
        return
    kwargs = {k: dist.get(k) for k in ("coordinator_address", "num_processes", "process_id")
              if dist.get(k) not in (None, "", -1)}
    jax.distributed.initialize(**kwargs)


@contextlib.contextmanager
def stop_requests(watcher, trainer):
    """Within: SIGINT (Ctrl-C) and SIGTERM ask ``watcher`` for a checkpoint at the next step boundary and a stop;
    ``trainer.stop_signal`` records which came. A second SIGINT stops at once (KeyboardInterrupt, no save).
    Single-process runs in the main thread only (multi-host preemption goes through JAX's sync point)."""
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if signum == signal.SIGINT and trainer.stop_signal == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_signal = trainer.stop_signal or signum
        log.warning("%s received: saving a checkpoint after this step and stopping%s", signal.Signals(signum).name,
                    " (Ctrl-C again stops without saving)" if signum == signal.SIGINT else "")
        watcher.request()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_config(config, workdir) -> None:
    """Check a training config and its paths before anything is created or loaded; ``ValueError`` /
    ``FileNotFoundError`` naming the field. Reads the first record of the dataset (data.data_dir), so a missing,
    damaged or mismatched dataset is reported here rather than after model initialization."""
    from geolrm_jax import io_atomic

    def need(ok, field, what):
        if not ok:
            raise ValueError(f"config.{field} = {config_value(field)!r}: {what}")

    def config_value(field):
        node = config
        for part in field.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        return node

    def number(field):
        value = config_value(field)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    need(config_value("stage") in (1, 2), "stage", "must be 1 or 2")
    for field in ("batch_size", "grad_accum_steps", "num_train_steps", "log_every_steps", "checkpoint.every_steps",
                  "max_consecutive_nonfinite"):
        need(isinstance(number(field), int) and number(field) >= 1, field, "must be a positive integer")
    for field in ("image_every_steps", "eval_every_steps", "profile_every_steps", "optim.warmup_steps"):
        value = config_value(field)
        need(value is None or (isinstance(number(field), int) and value >= 0), field,
             "must be a non-negative integer")
    lr = number("optim.lr")
    need(lr is not None and math.isfinite(lr) and lr > 0, "optim.lr", "must be a positive number")
    if config.get("eval_every_steps", 0):
        need(isinstance(number("num_eval_batches"), int) and number("num_eval_batches") >= 1, "num_eval_batches",
             "must be a positive integer when eval_every_steps > 0")
    data_dir = None
    if config.data.get("source", "tfds") == "procedural":
        for field in ("input_size", "render_size", "grid_size", "input_views", "target_views", "steps",
                      "supersample", "input_supersample"):
            need(isinstance(number(f"data.{field}"), int) and number(f"data.{field}") >= 1, f"data.{field}",
                 "must be a positive integer")
        for field in ("family_weights", "rig_weights"):
            weights = config_value(f"data.{field}")
            need(all(isinstance(w, int | float) and w >= 0 for w in weights) and sum(weights) > 0,
                 f"data.{field}", "must be non-negative with a positive sum")
    else:
        data_dir = config_value("data.data_dir")
        need(isinstance(data_dir, str) and data_dir, "data.data_dir",
             "is empty: build a dataset first (geolrm-jax data synthetic) and pass --config.data.data_dir=DIR")
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"config.data.data_dir = {data_dir!r}: no such folder")
        splits = ["train"] + ([config.eval_split] if config.get("eval_every_steps", 0) else [])
        for split in splits:
            _check_dataset(data_dir, split, config.data.get("grid_size"))
    for field in ("init_from", "loss.lpips_weights"):
        value = config_value(field)
        if value and not os.path.exists(value):
            raise FileNotFoundError(f"config.{field} = {value!r}: not found")
    if config.stage == 2 and config_value("loss.lpips") and config_value("loss.lpips") > 0:
        from geolrm_jax.train.lpips import load_lpips_params

        need(bool(config_value("loss.lpips_weights")), "loss.lpips_weights",
             "is needed when loss.lpips > 0 (see geolrm-jax lpips-weights)")
        io_atomic.read_or_fail(load_lpips_params, config.loss.lpips_weights, "LPIPS weights")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir}: exists and is not a folder")
    io_atomic.check_apart(workdir, [data_dir, config.get("init_from") or None,
                                    config_value("loss.lpips_weights") or None])


def _check_dataset(data_dir: str, split: str, grid_size) -> None:
    from geolrm_jax.data.gobjaverse import data_source

    try:
        source = data_source(data_dir, split, grid_size=grid_size)
        if len(source) == 0:
            raise ValueError(f"split {split!r} is empty")
        record = source[0]
        if not isinstance(record, dict) or "png" not in record:
            raise ValueError(f"split {split!r}: records lack the 'png' field")
    except Exception as err:  # tfds / array_record raise many types for missing or damaged files
        message = " ".join(str(err).split())[:400]
        raise ValueError(f"config.data.data_dir = {data_dir!r}: not a readable dataset ({type(err).__name__}: "
                         f"{message})") from err


def flatten_config(tree, prefix=""):
    """Nested dict → {'a.b.c': str(value)} for hparams summaries."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def metrics_collection(names):
    """clu Collection: Average for every metric, LastValue for the learning rate and streak counter."""
    if "mask" in names:
        raise ValueError("a metric may not be named 'mask' (clu.metrics reserves it for masking)")
    fields = {n: (clu_metrics.LastValue if n in LAST_VALUE_METRICS else clu_metrics.Average).from_output(n)
              for n in sorted(names)}
    return clu_metrics.Collection.create(**fields)


def default_data_iterator(config, split: str, seed: int, batch_size: int):
    if config.data.get("source", "tfds") == "procedural":
        from geolrm_jax.data.procedural_pipeline import ProceduralIterator

        return ProceduralIterator(config.data, split, seed=seed, batch_size=batch_size)
    from geolrm_jax.data.pipeline import make_iterator

    return make_iterator(config.data, split, seed=seed, batch_size=batch_size)


class Trainer:
    """Owns mesh, state, jit-compiled step, data iterator, checkpointer.

    task: object with init_variables(rng, micro_batch) -> {'params', 'batch_stats'},
          loss_fn(params, batch_stats, micro_batch, rng) -> (loss, (metrics, batch_stats, aux)),
          summary_images(params, batch_stats, micro_batch, rng) -> {name: (N, H, W, 3)}; default from config.
    make_data_iterator(config, split, seed, batch_size) -> iterator of numpy dict batches with
          get_state()/set_state(); default: geolrm_jax.data.pipeline.make_iterator.
    """

    def __init__(self, config, workdir, *, task=None, make_data_iterator=None, mesh=None):
        self.config = config
        self.workdir = os.path.abspath(os.fspath(workdir))  # Orbax needs absolute paths
        self.mesh = sharding.mesh_from_config(config.mesh) if mesh is None else mesh
        if task is None:
            from geolrm_jax.train.stages import build_task

            task = build_task(config)
        self.task = task
        self.accum = int(config.grad_accum_steps)
        if config.batch_size % jax.process_count():
            raise ValueError(f"batch_size {config.batch_size} not divisible by {jax.process_count()} processes")
        local_batch = config.batch_size // jax.process_count() * self.accum
        self.make_data_iterator = make_data_iterator or default_data_iterator
        self.data = self.make_data_iterator(config, "train", config.seed + jax.process_index(), local_batch)
        self.tx, self.schedule = make_optimizer(config.optim)
        ck = config.checkpoint
        self.checkpointer = checkpointing.Checkpointer(
            os.path.join(self.workdir, "checkpoints"), keep_last=ck.keep_last, keep_best=ck.keep_best,
            best_metric=ck.best_metric, best_mode=ck.best_mode, async_save=ck.async_save)

        example = self._peek_batch()
        self._example_micro_batch = jax.tree.map(lambda x: x[0], steps.split_accumulation(example, self.accum))
        abstract = jax.eval_shape(self._create_state, jax.random.PRNGKey(0), self._example_micro_batch)
        self.state_shardings = sharding.state_shardings(abstract, self.mesh, config.mesh.min_fsdp_size)
        self.abstract_state = checkpointing.abstract_with_shardings(abstract, self.state_shardings)
        replicated = sharding.replicated(self.mesh)
        batch_shardings = sharding.batch_sharding(self.mesh, leading_dims=2)
        loss_fn = task.loss_fn
        if config.mesh.get("batch_local_loss", False):  # per-device loss under shard_map (sharding.py)
            loss_fn = sharding.batch_local_loss(loss_fn, self.mesh)
        train_step = steps.make_train_step(loss_fn, self.tx, self.schedule)
        self.train_step = sharding.call_with_activation_sharding(
            steps.jit_train_step(train_step, self.state_shardings, batch_shardings, replicated), self.mesh)
        self._summary_fn = jax.jit(task.summary_images, out_shardings=replicated)
        def eval_metrics(params, batch_stats, batch, rng):
            loss, (values, _, _) = task.loss_fn(params, batch_stats, batch, rng)
            return dict(values, loss=loss)

        self._eval_fn = jax.jit(eval_metrics, out_shardings=replicated)

    # ---- state -------------------------------------------------------------------------------------------
    def _peek_batch(self):
        state = self.data.get_state()
        batch = next(self.data)
        self.data.set_state(state)
        return batch

    def _create_state(self, rng, micro_batch):
        init_rng, state_rng = jax.random.split(rng)
        variables = self.task.init_variables(init_rng, micro_batch)
        return TrainState.create(variables["params"], variables.get("batch_stats", {}), self.tx, state_rng)

    def init_state(self):
        example = jax.tree.map(jnp.asarray, self._example_micro_batch)
        create = jax.jit(self._create_state, out_shardings=self.state_shardings)
        state = create(jax.random.PRNGKey(self.config.seed), example)
        init_from = self.config.get("init_from", "")
        if init_from:
            state = self._load_init_weights(state, init_from, tuple(self.config.get("init_subtrees", ())))
        return state

    def _load_init_weights(self, state, path, subtrees):
        """Replace `subtrees` of params/batch_stats (all when empty) with those of a previous run's
        checkpoint directory or a `geolrm-jax convert` output."""
        if os.path.isdir(os.path.join(path, "checkpoints")):
            source = checkpointing.Checkpointer(os.path.join(path, "checkpoints"))
            step = source.latest_step()
            if step is None:
                raise FileNotFoundError(f"init_from: no checkpoint under {path}/checkpoints")
            import orbax.checkpoint as ocp

            restored = source.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            variables = {"params": restored["state"]["params"], "batch_stats": restored["state"]["batch_stats"]}
        else:
            from geolrm_jax.model.convert import restore_variables

            variables = restore_variables(path)
        unknown = [name for name in subtrees if name not in state.params]
        if unknown:
            raise ValueError(f"init_subtrees {unknown} missing from the model's params {list(state.params)}")
        replaced = {}
        for collection in ("params", "batch_stats"):
            current = dict(getattr(state, collection))
            loaded = variables.get(collection, {})
            for name in subtrees or tuple(current):
                if name not in current:
                    continue
                if name not in loaded:
                    raise ValueError(f"init_from {path}: {collection}/{name} missing")
                target = jax.tree.map(lambda x: x.sharding, current[name])
                shapes_ok = jax.tree.map(lambda a, b: np.shape(a) == np.shape(b), current[name], loaded[name])
                if not all(jax.tree.leaves(shapes_ok)):
                    raise ValueError(f"init_from {path}: {collection}/{name} shapes differ from the model")
                current[name] = jax.device_put(
                    jax.tree.map(lambda a, b: np.asarray(b, a.dtype), current[name], loaded[name]), target)
            replaced[collection] = current
        log.info("initialized %s from %s", subtrees or "all subtrees", path)
        return state.replace(**replaced)

    def restore_or_init(self):
        """Latest checkpoint of this workdir (state + data-iterator position), else fresh initialization."""
        if self.checkpointer.latest_step() is not None:
            state, saved = self.checkpointer.restore(self.abstract_state)
            self.data.set_state(checkpointing.data_state_for_process(
                saved, self.data, jax.process_index(), jax.process_count()))
            log.info("restored step %d from %s", int(state.step), self.workdir)
            return state
        return self.init_state()

    def save(self, state, metrics=None):
        self.checkpointer.save(int(state.step), state, self.data.get_state(), metrics)

    # ---- steps -------------------------------------------------------------------------------------------
    def next_batch(self):
        return next(self.data)

    def put_batch(self, batch):
        return sharding.global_batch(steps.split_accumulation(batch, self.accum), self.mesh, leading_dims=2)

    def step(self, state, batch=None):
        batch = self.next_batch() if batch is None else batch
        return self.train_step(state, self.put_batch(batch))

    def summary_images(self, state, batch):
        micro = jax.tree.map(lambda x: x[0], self.put_batch(batch))
        key = jax.random.fold_in(state.rng, state.step)
        images = jax.device_get(self._summary_fn(state.params, state.batch_stats, micro, key))
        return {name: writers.image_grid(value)[None] for name, value in images.items()}

    def evaluate(self, state):
        """Average loss-function metrics over config.num_eval_batches batches of config.eval_split (a fresh,
        deterministic iterator each time); returns {'eval_<name>': value}."""
        local_batch = self.config.batch_size // jax.process_count()
        data = self.make_data_iterator(self.config, self.config.eval_split, self.config.seed, local_batch)
        key = jax.random.PRNGKey(self.config.seed)
        accumulated = None
        try:
            for index in range(self.config.num_eval_batches):
                batch = next(data, None)
                if batch is None:
                    break
                micro = jax.tree.map(lambda x: x[0], self.put_batch_unsplit(batch))
                values = self._eval_fn(state.params, state.batch_stats, micro, jax.random.fold_in(key, index))
                update = metrics_collection(values).single_from_model_output(**values)
                accumulated = update if accumulated is None else accumulated.merge(update)
        finally:
            close = getattr(data, "close", None)
            if close is not None:
                close()
        if accumulated is None:
            raise ValueError(f"evaluation split {self.config.eval_split!r} yielded no batch")
        return {f"eval_{k}": float(v) for k, v in accumulated.compute().items()}

    def put_batch_unsplit(self, batch):
        return sharding.global_batch(jax.tree.map(lambda x: x[None], batch), self.mesh, leading_dims=2)

    # ---- loop --------------------------------------------------------------------------------------------
    def train(self):
        """Train to config.num_train_steps (resuming if possible).

        Returns the last logged metrics plus step, preempted, nonfinite_total and history (every logged
        metrics dict of this call, as (step, dict) pairs)."""
        config = self.config
        is_main = jax.process_index() == 0
        writer = writers.create_writer(self.workdir, write=is_main)
        state = self.restore_or_init()
        start = int(state.step)
        if start == 0 and is_main:
            parameter_overview.log_parameter_overview(state.params)
            writer.write_hparams(flatten_config(config.to_dict()))
        hooks = []
        if is_main:
            hooks.append(periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                                         every_steps=config.log_every_steps, every_secs=None))
            if config.get("profile_every_steps", 0):
                hooks.append(periodic_actions.Profile(logdir=self.workdir, num_profile_steps=5,
                                                      every_steps=config.profile_every_steps, every_secs=None))
        collection, accumulated, last_logged = None, None, {}
        self.history = []  # [(step, logged metrics)] of this call
        previous_streak = None
        stopped_early = False
        self.stop_signal = None
        with checkpointing.PreemptionWatcher() as watcher, stop_requests(watcher, self):
            self.preemption = watcher
            for step in range(start + 1, config.num_train_steps + 1):
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = self.next_batch()
                    state, metrics = self.step(state, batch)
                if collection is None:
                    collection = metrics_collection(metrics)
                update = collection.single_from_model_output(**metrics)
                accumulated = update if accumulated is None else accumulated.merge(update)
                if previous_streak is not None:
                    self._check_nonfinite(int(previous_streak), step - 1)
                previous_streak = metrics["nonfinite_consecutive"]
                for hook in hooks:
                    hook(step)
                if step % config.log_every_steps == 0 or step == config.num_train_steps:
                    last_logged = {k: float(v) for k, v in accumulated.compute().items()}
                    writer.write_scalars(step, last_logged)
                    self.history.append((step, last_logged))
                    accumulated = None
                if config.get("eval_every_steps", 0) and (step % config.eval_every_steps == 0
                                                          or step == config.num_train_steps):
                    evaluated = self.evaluate(state)
                    writer.write_scalars(step, evaluated)
                    last_logged = dict(last_logged, **evaluated)
                    self.history.append((step, evaluated))
                if config.image_every_steps and step % config.image_every_steps == 0:
                    writer.write_images(step, self.summary_images(state, batch))
                preempted = watcher.reached(step)
                if (step % config.checkpoint.every_steps == 0 or step == config.num_train_steps or preempted):
                    best = config.checkpoint.best_metric
                    self.save(state, {best: last_logged[best]} if best in last_logged else None)
                if preempted:
                    log.warning("stopping after the preemption checkpoint at step %d", step)
                    stopped_early = True
                    break
            self._check_nonfinite(int(previous_streak) if previous_streak is not None else 0, step)
        self.checkpointer.wait()
        writer.flush()
        self.final_state = state
        return dict(last_logged, step=int(state.step), preempted=stopped_early, stop_signal=self.stop_signal,
                    nonfinite_total=int(state.nonfinite_total), history=self.history)

    def _check_nonfinite(self, streak: int, step: int):
        limit = self.config.max_consecutive_nonfinite
        if streak >= limit:
            raise FloatingPointError(
                f"{streak} consecutive steps up to step {step} had a non-finite loss or gradient and were "
                f"skipped (limit max_consecutive_nonfinite={limit}); the last checkpoint in {self.workdir} "
                "holds the last finite state. Lower optim.lr, check the data, or use float32 compute.")

    def close(self):
        self.checkpointer.close()
        close_data = getattr(self.data, "close", None)
        if close_data is not None:  # Grain worker processes
            close_data()


def train_and_evaluate(config, workdir: str):
    """Train the stage given by config.stage in `workdir` (resumes from its latest checkpoint).

    The config and its paths are checked (``check_config``) before the workdir is created."""
    maybe_initialize_distributed(config)
    workdir = os.path.abspath(workdir)  # Orbax refuses relative checkpoint paths
    check_config(config, workdir)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
    trainer = Trainer(config, workdir)
    started = time.time()
    try:
        result = trainer.train()
    finally:
        trainer.close()
    log.info("training finished in %.1f s: %s", time.time() - started, result)
    return result
