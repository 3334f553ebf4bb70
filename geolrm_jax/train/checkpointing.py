"""Orbax checkpoints of the train state plus the data-iterator state, and preemption handling.

Layout: <workdir>/checkpoints/<step>/{state, data}; `state` is the TrainState pytree (params, batch_stats,
opt_state, step, rng, counters) saved with StandardSave, `data` the JSON state of the input iterator.
Orbax writes each save into a temporary directory and renames it when complete, so a save interrupted by a
crash or kill leaves no step directory and the previous checkpoint stays the latest restorable one.
"""
import json
import logging
import signal
import threading

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

log = logging.getLogger(__name__)


def iterator_state_to_json(state):
    """Grain DataLoader iterators return bytes (JSON), dataset iterators a dict; both become a dict."""
    if isinstance(state, bytes):
        return {"bytes_utf8": state.decode("utf-8")}
    json.dumps(state)  # fail here, not inside the async save, when the state is not JSON-serializable
    return {"state": state}


def iterator_state_from_json(saved):
    if "bytes_utf8" in saved:
        return saved["bytes_utf8"].encode("utf-8")
    return saved["state"]


class Checkpointer:
    """CheckpointManager with keep-last-N ∪ keep-best-N preservation and async saves.

    best_metric: name in the `metrics` dict passed to save(); best_mode 'min' or 'max'.
    """

    def __init__(self, directory, *, keep_last: int = 3, keep_best: int = 1, best_metric: str = "loss",
                 best_mode: str = "min", async_save: bool = True):
        if best_mode not in ("min", "max"):
            raise ValueError(f"checkpoint.best_mode must be 'min' or 'max', got {best_mode!r}")
        sign = -1.0 if best_mode == "min" else 1.0
        policies = [pp.LatestN(n=keep_last)]
        if keep_best:
            policies.append(pp.BestN(get_metric_fn=lambda m: sign * float(m[best_metric]), n=keep_best,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, iterator_state, metrics=None) -> bool:
        """Start a (possibly async) save; returns immediately after the device→host copy."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(iterator_state_to_json(iterator_state)))
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self.manager.save(int(step), args=args, metrics=metrics, force=True)

    def restore(self, abstract_state, step: int | None = None):
        """Restore onto the shardings given by `abstract_state` (ShapeDtypeStructs with .sharding), which may
        belong to a different mesh than the one that saved. Returns (state, iterator_state)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], iterator_state_from_json(restored["data"])

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


class PreemptionWatcher:
    """SIGTERM → request a final save at the next step boundary.

    Multi-host: every process must agree on the step, so the decision goes through
    `multihost_utils.reached_preemption_sync_point` (JAX's preemption service, which also listens to SIGTERM)
    when jax.distributed is initialized with more than one process; single-process a plain signal handler.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._multihost = jax.process_count() > 1

    def __enter__(self):
        if not self._multihost and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint at the next step and stopping")
        self._flag.set()

    def request(self):
        """Trigger the same path as a SIGTERM (used by tests and by callers that detect preemption)."""
        self._flag.set()

    def reached(self, step: int) -> bool:
        if self._multihost:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return self._flag.is_set()
