"""TFDS builders ``gobjaverse`` and ``synthetic_objects`` (array_record; readable without TensorFlow).

``gobjaverse`` reads the GObjaverse on-disk layout (see ``gobjaverse_io``; the same builder reads evaluation
sets rendered the same way, e.g. GSO or OmniObject3D renders) and writes one record per object:

=================  ======================  ===============================================================
feature            shape / dtype           meaning
=================  ======================  ===============================================================
``object_id``      text                    ``"<group>/<id>"``
``png``            V x bytes               the views' RGBA PNG files, as on disk (validated at build time)
``depth_png``      V x bytes               cleaned z-depth (0 = invalid) as 16-bit PNG codes
``depth_scale``    (V,) float32            depth = code * scale (scale = max depth / 65535: error < 3e-5
                                           for depths below 4)
``c2w``            (V, 4, 4) float32       OpenGL camera-to-world (``geometry.read_gobjaverse_camera``)
``K``              (V, 3, 3) float32       normalized intrinsics
``occupancy``      (M, 3) uint16           sparse occupancy indices on the config's grid (``occupancy``)
=================  ======================  ===============================================================

Bad objects (missing/truncated/corrupt PNG, EXR or JSON, non-finite depth or normals, wrong image size, blank
renders without any valid depth) are
logged with the file path and skipped; their count is kept in ``builder.bad_examples`` and written beside the
dataset as ``bad_examples.json``. When more than ``max_bad_fraction`` of a split's objects are bad, the build
stops with an error listing them.

``synthetic_objects`` first writes procedural objects (``synthetic``) in the GObjaverse layout, then builds
from that layout with the ``gobjaverse`` code path, so the whole reader is exercised end to end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from geolrm_jax.data import gobjaverse_io, occupancy, synthetic

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class GObjaverseConfig(tfds.core.BuilderConfig):
    """image_size: expected square size of every view (None: taken from the first view of each object);
    grid_size: occupancy grid; num_views: views per object."""

    image_size: int | None = None
    grid_size: int = 128
    num_views: int = gobjaverse_io.NUM_VIEWS


def object_record(object_dir: str, object_id: str, config: GObjaverseConfig) -> dict:
    """Read, validate and preprocess one object -> a record of the table above (raises BadInputError)."""
    views = gobjaverse_io.read_object(object_dir, config.num_views, config.image_size)
    depths = np.stack([v.depth for v in views])
    c2w = np.stack([v.c2w for v in views])
    K = np.stack([v.K for v in views])
    occ = occupancy.occupancy_indices(depths, c2w, K, config.grid_size)
    if len(occ) == 0:
        raise gobjaverse_io.BadInputError(object_dir, "no valid depth in any view (blank render)")
    encoded = [gobjaverse_io.encode_depth(d) for d in depths]
    return {
        "object_id": object_id,
        "png": [v.png for v in views],
        "depth_png": [e[0] for e in encoded],
        "depth_scale": np.asarray([e[1] for e in encoded], np.float32),
        "c2w": c2w.astype(np.float32),
        "K": K.astype(np.float32),
        "occupancy": occ,
    }


def _try_record(args):
    object_dir, object_id, config = args
    try:
        return object_id, object_record(object_dir, object_id, config), None
    except gobjaverse_io.BadInputError as err:
        return object_id, None, (err.path, err.reason)


class Gobjaverse(tfds.core.GeneratorBasedBuilder):
    """GObjaverse-layout objects. ``root``: the layout's root; ``object_list``: JSON of names (see
    ``gobjaverse_io.read_object_list``; default ``root/object_list.json``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "PNG + 16-bit depth PNG + cameras + sparse occupancy per object."}
    BUILDER_CONFIGS = [GObjaverseConfig(name="default", description="40 views, 128^3 occupancy grid")]

    def __init__(self, *, root: str | None = None, object_list: str | None = None,
                 max_bad_fraction: float = 0.05, num_workers: int = 1, **kwargs):
        self.root = root
        self.object_list = object_list
        self.max_bad_fraction = max_bad_fraction
        self.num_workers = num_workers
        self.bad_examples: dict[str, list[dict]] = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        v = self.builder_config.num_views
        bytes_seq = tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_), length=v)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "object_id": tfds.features.Text(),
                "png": bytes_seq,
                "depth_png": bytes_seq,
                "depth_scale": tfds.features.Tensor(shape=(v,), dtype=np.float32),
                "c2w": tfds.features.Tensor(shape=(v, 4, 4), dtype=np.float32),
                "K": tfds.features.Tensor(shape=(v, 3, 3), dtype=np.float32),
                "occupancy": tfds.features.Tensor(shape=(None, 3), dtype=np.uint16),
            }),
            metadata=tfds.core.MetadataDict(grid_size=self.builder_config.grid_size),
        )

    def _layout(self, dl_manager) -> tuple[str, str]:
        del dl_manager
        if self.root is None:
            raise ValueError("the gobjaverse builder needs root=<GObjaverse layout root>")
        return self.root, self.object_list or os.path.join(self.root, "object_list.json")

    def _split_generators(self, dl_manager):
        root, object_list = self._layout(dl_manager)
        splits = gobjaverse_io.read_object_list(object_list)
        return {split: self._generate_examples(root, split, names) for split, names in splits.items() if names}

    def _generate_examples(self, root, split, names):
        jobs = [(os.path.join(root, name), name, self.builder_config) for name in names]
        if self.num_workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(self.num_workers)
            results = pool.imap(_try_record, jobs, chunksize=1)
        else:
            pool, results = None, map(_try_record, jobs)
        bad = self.bad_examples.setdefault(split, [])
        try:
            for name, record, error in results:
                if error is not None:
                    log.warning("skipping object %s: %s: %s", name, *error)
                    bad.append({"object_id": name, "path": error[0], "reason": error[1]})
                    continue
                yield name, record
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        if len(bad) > self.max_bad_fraction * len(names):
            listing = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad[:20])
            raise RuntimeError(
                f"{len(bad)} of {len(names)} objects of split '{split}' are bad (more than max_bad_fraction="
                f"{self.max_bad_fraction}); first ones:\n{listing}"
            )

    def download_and_prepare(self, *args, **kwargs):
        super().download_and_prepare(*args, **kwargs)
        if self.bad_examples:
            with open(os.path.join(self.data_dir, "bad_examples.json"), "w") as f:
                json.dump(self.bad_examples, f, indent=1)


@dataclasses.dataclass(eq=False)
class SyntheticConfig(GObjaverseConfig):
    """num_objects objects (the last validation_objects form the validation split) from seed."""

    num_objects: int = 64
    validation_objects: int = 4
    seed: int = 0
    supersample: int = 2


def synthetic_config(num_objects=64, image_size=128, grid_size=128, validation_objects=4, seed=0,
                     supersample=2) -> SyntheticConfig:
    name = f"n{num_objects}_v{validation_objects}_{image_size}px_grid{grid_size}_seed{seed}_ss{supersample}"
    return SyntheticConfig(name=name, image_size=image_size, grid_size=grid_size, num_objects=num_objects,
                           validation_objects=validation_objects, seed=seed, supersample=supersample)


class SyntheticObjects(Gobjaverse):
    """Procedural objects written in the GObjaverse layout under ``render_dir`` (default
    ``<data_dir>/synthetic_objects_render/<config name>``), then built like ``gobjaverse``."""

    BUILDER_CONFIGS = [synthetic_config()]

    def __init__(self, *, render_dir: str | None = None, **kwargs):
        self.render_dir = render_dir
        super().__init__(**kwargs)

    def _layout(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        root = self.render_dir or os.path.join(self._data_dir_root, "synthetic_objects_render", cfg.name)
        object_list = os.path.join(root, "object_list.json")
        if not os.path.exists(object_list):
            synthetic.write_dataset(root, cfg.num_objects, cfg.image_size, cfg.seed, cfg.validation_objects,
                                    cfg.supersample, self.num_workers)
        return root, object_list


def data_source(data_dir: str, split: str, grid_size: int | None = None):
    """Random-access source of a built dataset directory (``<data_dir>/<name>/<config>/<version>``),
    without TensorFlow and without importing the builder class. ``grid_size``, when given, must match the
    grid the dataset's occupancy was computed on."""
    builder = tfds.builder_from_directory(data_dir)
    built_grid = builder.info.metadata.get("grid_size") if builder.info.metadata else None
    if grid_size is not None and built_grid is not None and int(built_grid) != grid_size:
        raise ValueError(f"{data_dir}: occupancy was built on a {built_grid}^3 grid, but grid_size={grid_size} "
                         f"was asked for; rebuild the dataset or set data.grid_size = {built_grid}")
    if split not in builder.info.splits:
        raise ValueError(f"{data_dir}: no split {split!r} (has {sorted(builder.info.splits)})")
    return builder.as_data_source(split=split)


def build_synthetic(data_dir: str, *, num_workers: int = 1, render_dir: str | None = None, **config_kwargs):
    """Generate (if needed) and build ``synthetic_objects``; returns the built dataset directory."""
    config = synthetic_config(**config_kwargs)
    if any(c.name == config.name for c in SyntheticObjects.BUILDER_CONFIGS):
        config = config.name  # TFDS refuses a new config object named like a registered one
    builder = SyntheticObjects(data_dir=data_dir, config=config,
                               num_workers=num_workers, render_dir=render_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder.data_dir


def build_gobjaverse(data_dir: str, root: str, *, object_list: str | None = None, image_size: int | None = None,
                     grid_size: int = 128, num_views: int = gobjaverse_io.NUM_VIEWS,
                     max_bad_fraction: float = 0.05, num_workers: int = 1):
    """Build ``gobjaverse`` from a layout root; returns the built dataset directory."""
    config = GObjaverseConfig(name=f"{image_size or 'any'}px_grid{grid_size}_{num_views}views",
                              image_size=image_size, grid_size=grid_size, num_views=num_views)
    builder = Gobjaverse(data_dir=data_dir, config=config, root=root, object_list=object_list,
                         max_bad_fraction=max_bad_fraction, num_workers=num_workers, file_format="array_record")
    builder.download_and_prepare()
    return builder.data_dir


def main(argv=None) -> int:
    """``python -m geolrm_jax.data.gobjaverse --root LAYOUT --data-dir OUT``: build from a GObjaverse layout."""
    import argparse

    parser = argparse.ArgumentParser(description="Build the gobjaverse TFDS dataset from an on-disk layout.")
    parser.add_argument("--root", required=True, help="layout root (<root>/<group>/<id>/<view>/...)")
    parser.add_argument("--data-dir", required=True, help="TFDS data dir to write")
    parser.add_argument("--object-list", help="object-list JSON (default <root>/object_list.json)")
    parser.add_argument("--image-size", type=int, help="expected square view size (default: any, consistent)")
    parser.add_argument("--grid-size", type=int, default=128)
    parser.add_argument("--num-views", type=int, default=gobjaverse_io.NUM_VIEWS, help="views per object")
    parser.add_argument("--max-bad-fraction", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = build_gobjaverse(args.data_dir, args.root, object_list=args.object_list, image_size=args.image_size,
                           grid_size=args.grid_size, num_views=args.num_views,
                           max_bad_fraction=args.max_bad_fraction,
                           num_workers=args.workers)
    print(f"built {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
