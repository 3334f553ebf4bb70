"""Held-out procedural objects for ``geolrm-jax eval``, written in the GObjaverse layout.

Object ``index`` of ``family`` is ``procedural.sample_object`` drawn from
``SeedSequence([seed, EVAL_STREAM, family_index, index])`` (``EVAL_STREAM`` = 2; training draws stream 0 and
validation stream 1, each from ``SeedSequence([seed, stream, index])``), so no seed makes an evaluation object
a training or validation one. Its 40 cameras, drawn next from the same generator, are
``synthetic.gobjaverse_layout``'s: views 0-23 an orbit 15 degrees apart at one elevation U[5, 30] degrees,
radius 1.6, views 24-39 random (elevation U[-10, 50], radius U[1.6, 2.0]), field of view 49.13 degrees.

Each object is ``<root>/<family>/<index:04d>/`` with the views (``gobjaverse_io.write_view``: RGBA PNG from
the straight-alpha render, world normals and z-depth in ``_nd.exr``, camera JSON) and ``object.json``
(``family``, the generation parameters and ``scene``: every ``procedural.Scene`` field as nested lists, read
back by ``scene_from_json``). ``<root>/object_list.json`` is ``{"validation": [names]}``.

Rendering is one jitted ``procedural.render_views`` call per ``views_per_call`` views (the last chunk padded
by repeating a camera), compiled once for all objects of a run. Each object is written into a hidden
``.<index>.partial`` folder beside its destination and renamed into place; an object already there with the
same parameters is kept (an interrupted run resumes), one with other parameters stops the run before any
rendering.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import NamedTuple

import jax
import numpy as np

from geolrm_jax.data import gobjaverse_io, procedural, synthetic

EVAL_STREAM = 2
SPLIT = "validation"


class EvalObject(NamedTuple):
    name: str  # "<family>/<index:04d>"
    family: str
    index: int
    scene: procedural.Scene
    c2w: np.ndarray  # (40, 4, 4) OpenGL
    K: np.ndarray  # (40, 3, 3) normalized


def object_name(family: str, index: int) -> str:
    return f"{family}/{index:04d}"


def sample_eval_object(seed: int, family: str, index: int) -> EvalObject:
    """The ``index``-th evaluation object of ``family`` (a function of (seed, family, index) only)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, EVAL_STREAM, procedural.FAMILIES.index(family),
                                                        index]))
    scene, _ = procedural.sample_object(rng, family)
    c2w, K = synthetic.gobjaverse_layout(rng)
    return EvalObject(object_name(family, index), family, index, scene, c2w, K)


def scene_to_json(scene: procedural.Scene) -> dict:
    return {k: np.asarray(v).tolist() for k, v in scene._asdict().items()}


def scene_from_json(fields: dict) -> procedural.Scene:
    dtypes = {"valid": bool, "has_cut": bool, "kind": np.int32, "texture": np.int32}
    return procedural.Scene(**{k: np.asarray(fields[k], dtypes.get(k, np.float32)) for k in procedural.Scene._fields})


@functools.partial(jax.jit, static_argnames=("size", "supersample", "steps"))
def _render_chunk(scene, c2w, K, *, size: int, supersample: int, steps: int):
    return procedural.render_views(scene, c2w, K, size, supersample, steps)


def render_object(scene: procedural.Scene, c2w, K, size: int, supersample: int = 2, steps: int = 96,
                  views_per_call: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render V views -> (rgba (V, S, S, 4) uint8 straight alpha, z-depth (V, S, S) float32 with 0 = background,
    world normals (V, S, S, 3) float32)."""
    v = len(c2w)
    out = []
    for start in range(0, v, views_per_call):
        index = np.minimum(np.arange(start, start + views_per_call), v - 1)
        rgba, depth, normals = _render_chunk(scene, np.asarray(c2w)[index], np.asarray(K)[index], size=size,
                                             supersample=supersample, steps=steps)
        keep = min(views_per_call, v - start)
        out.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[:keep], (rgba, depth, normals)))
    rgba, depth, normals = (np.concatenate(parts) for parts in zip(*out, strict=True))
    rgba8 = np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)
    return rgba8, depth.astype(np.float32), normals.astype(np.float32)


def _params(seed: int, obj: EvalObject, image_size: int, supersample: int, steps: int) -> dict:
    return {"family": obj.family, "seed": int(seed), "stream": EVAL_STREAM, "index": obj.index,
            "image_size": image_size, "supersample": supersample, "steps": steps}


def _existing_params(object_dir: str) -> dict | None:
    path = os.path.join(object_dir, "object.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise gobjaverse_io.BadInputError(path, f"exists but cannot be read ({err}); not overwriting it") from err
    return {k: meta.get(k) for k in ("family", "seed", "stream", "index", "image_size", "supersample", "steps")}


def plan(root: str, seed: int, objects_per_family: int, families=procedural.FAMILIES, image_size: int = 512,
         supersample: int = 2, steps: int = 96) -> tuple[list[EvalObject], list[str]]:
    """The objects of a run and the names already written with the same parameters. Raises ``BadInputError``
    (naming the file) where ``root`` holds something else: an object with other parameters, an unreadable
    ``object.json``, or an ``object_list.json`` that is not this run's."""
    objects = [sample_eval_object(seed, f, i) for f in families for i in range(objects_per_family)]
    done = []
    for obj in objects:
        object_dir = os.path.join(root, obj.name)
        if not os.path.exists(object_dir):
            continue
        want = _params(seed, obj, image_size, supersample, steps)
        have = _existing_params(object_dir)
        if have != want:
            raise gobjaverse_io.BadInputError(os.path.join(object_dir, "object.json"),
                                              f"an object with other parameters is there ({have}); not "
                                              f"overwriting it (use a new folder)")
        done.append(obj.name)
    list_path = os.path.join(root, "object_list.json")
    if os.path.exists(list_path):
        existing = gobjaverse_io.read_object_list(list_path)
        if existing != {SPLIT: sorted(o.name for o in objects)}:
            raise gobjaverse_io.BadInputError(list_path, "exists with another object list; not overwriting it "
                                              "(use a new folder)")
    return objects, done


def write_object(root: str, obj: EvalObject, params: dict, image_size: int, supersample: int, steps: int,
                 views_per_call: int = 8) -> None:
    """Render and write one object (views + object.json) into ``.<index>.partial``, then rename it into place."""
    final = os.path.join(root, obj.name)
    partial = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial")
    if os.path.exists(partial):  # left by an interrupted run of this writer
        shutil.rmtree(partial)
    rgba, depth, normals = render_object(obj.scene, obj.c2w, obj.K, image_size, supersample, steps, views_per_call)
    for v in range(len(obj.c2w)):
        gobjaverse_io.write_view(partial, v, rgba[v], normals[v], depth[v], obj.c2w[v], obj.K[v])
    with open(os.path.join(partial, "object.json"), "w") as f:
        json.dump({**params, "parts": [procedural.PART_KINDS[k] for k, ok in zip(obj.scene.kind, obj.scene.valid,
                                                                                   strict=True) if ok],
                   "scene": scene_to_json(obj.scene)}, f)
    os.replace(partial, final)


def write_eval_set(root: str, seed: int, objects_per_family: int, families=procedural.FAMILIES,
                   image_size: int = 512, supersample: int = 2, steps: int = 96, views_per_call: int = 8,
                   progress=None) -> str:
    """Write the evaluation set (see the module doc) under ``root``; returns the object list's path.
    ``progress(name, written: bool)`` is called after each object."""
    objects, done = plan(root, seed, objects_per_family, families, image_size, supersample, steps)
    for obj in objects:
        written = obj.name not in done
        if written:
            write_object(root, obj, _params(seed, obj, image_size, supersample, steps), image_size, supersample,
                         steps, views_per_call)
        if progress is not None:
            progress(obj.name, written)
    path = os.path.join(root, "object_list.json")
    tmp = os.path.join(root, ".object_list.json.partial")
    with open(tmp, "w") as f:
        json.dump({SPLIT: [o.name for o in objects]}, f, indent=0)
    os.replace(tmp, path)
    return path


def read_family(object_dir: str) -> str | None:
    """The ``family`` of an object's ``object.json`` (None when there is no such file or field)."""
    try:
        with open(os.path.join(object_dir, "object.json")) as f:
            family = json.load(f).get("family")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return family if isinstance(family, str) else None
