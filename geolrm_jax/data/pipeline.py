"""Grain input pipeline over a built ``gobjaverse`` / ``synthetic_objects`` dataset (``tfds.data_source``).

Order of operations (all deterministic given ``seed``; see ``make_iterator``)::

    data source -> this host's shard [process_index::process_count] -> shuffle (reseeded every epoch)
      -> repeat -> per-example random map (view sampling, decoding, resizing, background) -> drop bad
      examples (counted) -> batch -> prefetch in worker processes

Yielded batches (numpy), with B the per-host batch size, Vi = 4 + 3 input slots, Vt = 8 target slots:

* ``input_images`` (B, Vi, H, W, 3) float32 in [0, 1], ``input_c2w`` (B, Vi, 4, 4), ``input_K`` (B, Vi, 3, 3),
  ``input_mask`` (B, Vi) bool (padded slots repeat a valid camera, have zero images and mask False);
* ``target_images`` (B, Vt, Hr, Wr, 3), ``target_alpha`` (B, Vt, Hr, Wr), ``target_depth`` (B, Vt, Hr, Wr)
  (z-depth, 0 where invalid), ``target_c2w``, ``target_K``, ``target_mask`` (B, Vt) bool;
* ``background`` (B, 3) float32: the targets' background, U[0, 1]^3 per example in training (the original's
  ``torch.rand(3)``), white in evaluation;
* ``occupancy`` (B, G, G, G) uint8.

Images and alpha are resized with 8-bit premultiplied-alpha bilinear filtering (antialiased when shrinking) and
composited on the background, so ``target_images = colour + (1 - target_alpha) * background`` holds exactly
(the original resizes alpha with nearest neighbour); depth is resized with nearest neighbour, as the
original, to keep depth edges free of interpolated points. Input images are composited on white by
default, like the original, whose model sees white-background inputs at inference;
``input_background="random"`` uses the example's background instead.

Bad records (undecodable PNG, wrong size, non-finite depth) are logged with the object id and view, skipped
and counted (``DataIterator.metrics()``); more than ``max_bad_fraction`` of the examples seen so far (once
``bad_check_min_examples`` were seen) raises ``BadDataError``.

Checkpoints: ``DataIterator.get_state()`` is this host's position (Grain state plus ``records`` consumed); the
trainer saves one per process and restores each process's own. Onto another number of processes,
``reshard_states`` starts every new host's stream at ``records consumed by all hosts // new host count``
(docs/pods.md).
"""

from __future__ import annotations

import logging
from typing import Any

import grain
import ml_collections
import numpy as np
from PIL import Image

from geolrm_jax.data import occupancy, sampling
from geolrm_jax.data.gobjaverse_io import NUM_ORBIT_VIEWS, BadInputError, composite, decode_depth, decode_png_rgba

log = logging.getLogger(__name__)
_BAD = "__bad_example__"
_SKIPPED = "__num_bad_skipped__"


class BadDataError(RuntimeError):
    """Too many bad examples."""


def default_data_config() -> ml_collections.ConfigDict:
    """Pipeline settings; ``data_dir`` is a built dataset directory (``<root>/<name>/<config>/<version>``)."""
    c = ml_collections.ConfigDict()
    c.data_dir = ""
    c.input_size = 448  # the original's input_size
    c.render_size = 448  # the original's render_size
    c.grid_size = 128
    c.num_orbit_views = NUM_ORBIT_VIEWS
    c.orbit_inputs = 4
    c.random_views = 4
    c.min_orbit_inputs = 1
    c.max_random_inputs = 3
    c.input_background = "white"  # or "random"
    c.random_background = True  # targets in training; evaluation always uses white
    c.shuffle = True
    c.num_epochs = -1  # -1: repeat forever
    c.num_workers = 2  # worker processes (0: in the main process)
    c.worker_buffer_size = 2
    c.read_threads = 2
    c.max_bad_fraction = 0.01
    c.bad_check_min_examples = 100
    return c


# ---------------------------------------------------------------------------------------------------------
# Per-example transform (runs in the worker processes)


def _resize_channels(channels: np.ndarray, size: int, resample) -> np.ndarray:
    """(H, W, C) float32 -> (size, size, C) with PIL filters (antialiased when shrinking)."""
    if channels.shape[0] == size and channels.shape[1] == size:
        return channels
    out = [np.asarray(Image.fromarray(channels[..., c], mode="F").resize((size, size), resample))
           for c in range(channels.shape[-1])]
    return np.stack(out, -1)


def _nearest(channel: np.ndarray, size: int) -> np.ndarray:
    return _resize_channels(channel[..., None].astype(np.float32), size, Image.NEAREST)[..., 0]


class ExampleTransform:
    """record (a data-source element) + rng -> example dict, or a bad-example marker."""

    def __init__(self, config: ml_collections.ConfigDict, training: bool):
        self.config = config
        self.training = training

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        object_id = record["object_id"]
        object_id = object_id.decode() if isinstance(object_id, bytes) else str(object_id)
        try:
            return self._example(record, object_id, rng)
        except BadInputError as err:
            log.warning("skipping bad example: %s", err)
            return {_BAD: str(err)}

    def _example(self, record: dict, object_id: str, rng: np.random.Generator) -> dict:
        c = self.config
        views = sampling.sample_views(
            rng, len(record["png"]), training=self.training, num_orbit_views=c.num_orbit_views,
            orbit_inputs=c.orbit_inputs, random_views=c.random_views, min_orbit_inputs=c.min_orbit_inputs,
            max_random_inputs=c.max_random_inputs)
        if self.training and c.random_background:
            background = rng.uniform(size=3).astype(np.float32)
        else:
            background = np.ones(3, np.float32)
        input_bg = background if c.input_background == "random" else np.ones(3, np.float32)
        needed = sorted(set(views.input_views.tolist()) | set(views.target_views.tolist()))
        rgba, depth, size = {}, {}, None
        for v in needed:
            source = f"{object_id} view {v}"
            rgba[v] = decode_png_rgba(record["png"][v], source + " png", size)
            size = rgba[v].shape[:2]
            depth[v] = decode_depth(record["depth_png"][v], float(record["depth_scale"][v]), source + " depth")
            if depth[v].shape != size:
                raise BadInputError(source, f"depth size {depth[v].shape} differs from image size {size}")
            if not np.all(np.isfinite(depth[v])):
                raise BadInputError(source, "non-finite depth")
        c2w, K = np.asarray(record["c2w"], np.float32), np.asarray(record["K"], np.float32)
        if not (np.all(np.isfinite(c2w)) and np.all(np.isfinite(K))):
            raise BadInputError(object_id, "non-finite cameras")
        occ = np.asarray(record["occupancy"])
        if occ.size and int(occ.max()) >= c.grid_size:
            raise BadInputError(object_id, f"occupancy indices exceed grid_size={c.grid_size}")

        iv, tv = views.input_views, views.target_views
        imask = views.input_mask
        inputs = np.zeros((len(iv), c.input_size, c.input_size, 3), np.float32)  # padded slots stay 0
        for i in np.flatnonzero(imask):
            inputs[i] = composite(rgba[iv[i]], c.input_size, input_bg)[0]
        targets = np.empty((len(tv), c.render_size, c.render_size, 3), np.float32)
        alpha = np.empty((len(tv), c.render_size, c.render_size), np.float32)
        for i, v in enumerate(tv):
            targets[i], alpha[i] = composite(rgba[v], c.render_size, background)
        tdepth = np.stack([_nearest(depth[v], c.render_size) for v in tv])
        return {
            "input_images": inputs,
            "input_c2w": c2w[iv],
            "input_K": K[iv],
            "input_mask": imask,
            "target_images": targets,
            "target_alpha": alpha,
            "target_depth": tdepth.astype(np.float32),
            "target_c2w": c2w[tv],
            "target_K": K[tv],
            "target_mask": views.target_mask,
            "background": background,
            "occupancy": occupancy.densify(occ, c.grid_size),
        }


# ---------------------------------------------------------------------------------------------------------
# Dropping bad examples with a count that travels with the data (so it survives worker processes)


class _DropBadIterDataset(grain.IterDataset):
    def __iter__(self):
        return _DropBadIterator(self._parents[0].__iter__())


class _DropBadIterator(grain.DatasetIterator):
    def __next__(self):
        skipped = 0
        while True:
            example = next(self._parents[0])
            if _BAD not in example:
                example[_SKIPPED] = np.int32(skipped)
                return example
            skipped += 1

    def get_state(self):
        return self._parents[0].get_state()

    def set_state(self, state):
        self._parents[0].set_state(state)


class DataIterator:
    """Iterator over batches with checkpointable state (``get_state``/``set_state``, JSON-serializable) and
    bad-example metrics.

    ``dataset``: the pipeline, or a function ``start_record -> pipeline`` that starts this process's record
    stream at a given position (needed to restore a state written by another number of processes, see
    ``reshard_state``). ``records`` in the state counts the records this process has consumed (examples
    yielded + bad examples skipped).
    """

    def __init__(self, dataset, batch_size: int, max_bad_fraction: float, bad_check_min_examples: int,
                 process_index: int = 0, process_count: int = 1):
        self._make = dataset if callable(dataset) else None
        self._iterator = iter(dataset(0) if self._make is not None else dataset)
        self.batch_size = batch_size
        self.max_bad_fraction = max_bad_fraction
        self.bad_check_min_examples = bad_check_min_examples
        self.process_index, self.process_count = process_index, process_count
        self.num_examples = 0
        self.num_bad = 0
        self.start_record = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._check(final=True)
            raise
        self.num_bad += int(np.sum(batch.pop(_SKIPPED)))
        self.num_examples += int(batch["background"].shape[0])
        self._check(final=False)
        return batch

    def _check(self, final: bool) -> None:
        seen = self.num_examples + self.num_bad
        if (final or seen >= self.bad_check_min_examples) and self.num_bad > self.max_bad_fraction * seen:
            raise BadDataError(
                f"{self.num_bad} of {seen} examples were bad (more than max_bad_fraction="
                f"{self.max_bad_fraction}); see the warnings above for the files")

    def metrics(self) -> dict[str, float]:
        seen = self.num_examples + self.num_bad
        return {"data/examples": self.num_examples, "data/bad_examples": self.num_bad,
                "data/bad_fraction": self.num_bad / max(seen, 1)}

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._iterator.get_state(), "num_examples": self.num_examples,
                "num_bad": self.num_bad, "start_record": self.start_record,
                "records": self.start_record + self.num_examples + self.num_bad,
                "process_index": self.process_index, "process_count": self.process_count}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state of ``get_state`` (this process's own, exact) or of ``reshard_state`` (a new start)."""
        start = int(state.get("start_record", 0))
        if state.get("grain") is None:
            if self._make is None:
                raise ValueError("this DataIterator was built from a dataset, not a function of the start record: "
                                 "it cannot restore a re-sharded state")
            self.close()
            self._iterator = iter(self._make(start))
        else:
            if start != self.start_record:
                if self._make is None:
                    raise ValueError(f"state starts at record {start}, this iterator at {self.start_record}")
                self.close()
                self._iterator = iter(self._make(start))
            self._iterator.set_state(state["grain"])
        self.start_record = start
        self.num_examples = int(state["num_examples"])
        self.num_bad = int(state["num_bad"])

    def reshard_state(self, states: list[dict[str, Any]], process_index: int, process_count: int) -> dict:
        """The state of process ``process_index`` of ``process_count`` from the states of every process of a
        run with another process count (see ``reshard_states``)."""
        return reshard_states(states, process_index, process_count)

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def reshard_states(states: list[dict[str, Any]], process_index: int, process_count: int) -> dict[str, Any]:
    """Re-sharding rule for a data position saved by N processes and restored on M != N processes.

    With E = the records consumed by all N processes together, every new process starts its own (new) shard's
    record stream at record ``E // M``: the global position in epochs is kept to within M records
    (each shard holds 1/M of the records, so E // M records of it are the same fraction of an epoch), while
    which records of the current epoch were already seen is not. The bad-example counters are split evenly.
    Deterministic: the same saved states give the same new state.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    records = sum(int(s.get("records", int(s["num_examples"]) + int(s["num_bad"]))) for s in states)
    return {"grain": None, "start_record": records // process_count,
            "num_examples": sum(int(s["num_examples"]) for s in states) // process_count,
            "num_bad": sum(int(s["num_bad"]) for s in states) // process_count,
            "process_index": process_index, "process_count": process_count}


def shard_indices(num_records: int, process_index: int, process_count: int) -> range:
    """Record indices of one host: ``range(process_index, num_records, process_count)``."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return range(process_index, num_records, process_count)


def _ignore_sigint(worker_index: int, worker_count: int) -> None:
    """Grain worker start: a terminal's Ctrl-C reaches the whole process group; the trainer handles it (saving a
    checkpoint), so the workers ignore it rather than die with KeyboardInterrupt tracebacks."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_dataset(source, data_config, *, seed: int, batch_size: int, training: bool = True,
                 process_index: int | None = None, process_count: int | None = None,
                 start_record: int = 0) -> grain.IterDataset:
    """The pipeline as a ``grain.IterDataset`` over any random-access ``source`` of records.

    ``start_record``: position in this host's (shuffled, repeated) record stream to begin at; the records'
    random transforms depend on their position, not on where the stream began."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    c = data_config
    if c.input_background not in ("white", "random"):
        raise ValueError(f"input_background must be 'white' or 'random', got {c.input_background!r}")
    ds = grain.MapDataset.source(source)
    ds = ds[slice(process_index, None, process_count)]
    if len(ds) == 0:
        raise ValueError(f"host {process_index}/{process_count} has no records (dataset has {len(source)})")
    if c.shuffle and training:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(None if c.num_epochs < 0 else c.num_epochs)
    ds = ds.random_map(ExampleTransform(c, training), seed=seed + 1)
    if start_record:
        ds = ds[start_record:]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads, prefetch_buffer_size=4))
    it = _DropBadIterDataset(it)
    it = it.batch(batch_size, drop_remainder=True)
    if c.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; keep their defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.num_workers,
                                                         per_worker_buffer_size=c.worker_buffer_size),
                            worker_init_fn=_ignore_sigint)
    return it


def make_iterator(data_config, split: str, *, seed: int, batch_size: int, training: bool | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  source=None) -> DataIterator:
    """Batches of ``split`` of the dataset at ``data_config.data_dir`` for this host.

    ``batch_size`` is this host's batch; ``training`` defaults to ``split == "train"``; ``source`` overrides
    the data source (any random-access sequence of records).
    """
    if training is None:
        training = split == "train"
    if source is None:
        from geolrm_jax.data.gobjaverse import data_source

        if not data_config.data_dir:
            raise ValueError("data_config.data_dir is empty: build a dataset first (geolrm-jax data synthetic)")
        source = data_source(data_config.data_dir, split, grid_size=data_config.grid_size)
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()

    def dataset(start_record: int) -> grain.IterDataset:
        return make_dataset(source, data_config, seed=seed, batch_size=batch_size, training=training,
                            process_index=process_index, process_count=process_count, start_record=start_record)

    return DataIterator(dataset, batch_size, data_config.max_bad_fraction, data_config.bad_check_min_examples,
                        process_index=process_index, process_count=process_count)
