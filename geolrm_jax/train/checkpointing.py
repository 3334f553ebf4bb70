"""Orbax checkpoints of the train state plus every process's data-iterator state, and preemption handling.

Layout: <workdir>/checkpoints/<step>/{state, data_processes}; `state` is the TrainState pytree (params,
batch_stats, opt_state, step, rng, counters) saved with StandardSave; `data_processes/process_<i>-of-<n>.json`
the JSON state of process i's input iterator, written by that process (as Grain's own Orbax handler names
them). Checkpoints of earlier versions hold one `data` item written by process 0; they restore as that state
for every process.
Orbax writes each save into a temporary directory and renames it when complete, so a save interrupted by a
crash or kill leaves no step directory and the previous checkpoint stays the latest restorable one.
"""
import dataclasses
import json
import logging
import os
import re
import signal
import threading
from typing import Any

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


_PROCESS_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


class ProcessDataHandler(ocp.CheckpointHandler):
    """Each process writes its own iterator state as process_<i>-of-<n>.json; restore reads all of them.

    Restore returns {"process_count": n, "states": [state of process 0, ..., state of process n-1]}."""

    def save(self, directory, args: "ProcessDataSave"):
        directory.mkdir(parents=True, exist_ok=True)
        index, count = jax.process_index(), jax.process_count()
        record = {"process_index": index, "process_count": count, **iterator_state_to_json(args.state)}
        (directory / f"process_{index}-of-{count}.json").write_text(json.dumps(record))

    def restore(self, directory, args: "ProcessDataRestore" = None):
        found = {}
        for path in directory.iterdir():
            match = _PROCESS_FILE.match(path.name)
            if match:
                found[int(match.group(1))] = (int(match.group(2)), json.loads(path.read_text()))
        counts = {count for count, _ in found.values()}
        if len(counts) != 1 or sorted(found) != list(range(next(iter(counts)))):
            raise ValueError(f"{directory}: incomplete per-process data states {sorted(found)} of {sorted(counts)}")
        return {"process_count": counts.pop(),
                "states": [iterator_state_from_json(found[i][1]) for i in sorted(found)]}

    def metadata(self, directory):
        return None

    def structure(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(ProcessDataHandler, for_save=True)
@dataclasses.dataclass
class ProcessDataSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(ProcessDataHandler, for_restore=True)
@dataclasses.dataclass
class ProcessDataRestore(ocp.args.CheckpointArgs):
    pass


def data_state_for_process(saved, iterator, process_index: int, process_count: int):
    """This process's iterator state from a checkpoint's per-process states.

    Same process count: the process's own state (exact). Another count: `iterator.reshard_state(states,
    process_index, process_count)` (the iterator's documented rule); iterators without it cannot move."""
    states = saved["states"]
    if saved["process_count"] == process_count:
        return states[process_index]
    reshard = getattr(iterator, "reshard_state", None)
    if reshard is None:
        raise ValueError(f"checkpoint data states were written by {saved['process_count']} processes; this run "
                         f"has {process_count} and its data iterator has no reshard_state")
    return reshard(states, process_index, process_count)


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
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_names=("state", "data_processes", "data"))

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, iterator_state, metrics=None) -> bool:
        """Start a (possibly async) save of `state` and this process's `iterator_state` (every process calls
        it with its own); returns immediately after the device→host copy."""
        iterator_state_to_json(iterator_state)  # not JSON-serializable: fail here, not in the async save
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data_processes=ProcessDataSave(iterator_state))
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self.manager.save(int(step), args=args, metrics=metrics, force=True)

    def restore(self, abstract_state, step: int | None = None):
        """Restore onto the shardings given by `abstract_state` (ShapeDtypeStructs with .sharding), which may
        belong to a different mesh than the one that saved.

        Returns (state, {"process_count": n, "states": [iterator state of each of the n saving processes]});
        see `data_state_for_process`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        if os.path.isdir(os.path.join(os.fspath(self.manager.directory), str(step), "data_processes")):
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data_processes=ProcessDataRestore()))
            return restored["state"], restored["data_processes"]
        restored = self.manager.restore(step, args=ocp.args.Composite(  # written before per-process states
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], {"process_count": jax.process_count(),
                                   "states": [iterator_state_from_json(restored["data"])] * jax.process_count()}

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
