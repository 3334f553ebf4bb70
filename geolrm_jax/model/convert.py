"""Import of PyTorch GeoLRM / Hugging Face DINOv2 weights into the Flax variable tree, and `geolrm-jax convert`.

    geolrm-jax convert IN OUT [--config official|tiny|CONFIG.json] [--overwrite]

IN is a flat state dict (`serializer.*` = proposal network, `lrm_generator.*` = reconstruction network):
`.safetensors` (read with safetensors), or `.ckpt` / `.pt` (read with `torch.load(weights_only=True)`; torch
is only needed for these). Unknown keys (e.g. `lpips.*`) are listed and skipped; a missing or misshaped key
is an error naming it. OUT is written as an Orbax checkpoint of {"params", "batch_stats"}, with the model
config beside it (geolrm_model_config.json); `restore_variables(OUT)` / `restore_config(OUT)` read them back.
OUT is written beside its final place and renamed in at the end; an existing OUT needs `--overwrite` and is
replaced only when it is a checkpoint this command wrote. Unreadable files give one-line errors
(`CheckpointError`, `ConfigError`) naming them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import re
import sys
import zipfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from geolrm_jax import io_atomic
from geolrm_jax.model import config as model_config

# Keys that are present in the original checkpoint but unused at inference.
_UNUSED = (re.compile(r"\.num_batches_tracked$"), re.compile(r"embeddings\.mask_token$"))
# Older Hugging Face DINOv2 names -> the transformers>=5 names used by the GeoLRM checkpoint.
_HF_RENAMES = ((".attention.attention.query.", ".attention.q_proj."),
               (".attention.attention.key.", ".attention.k_proj."),
               (".attention.attention.value.", ".attention.v_proj."),
               (".attention.output.dense.", ".attention.o_proj."))


class ConversionError(ValueError):
    """A missing or misshaped checkpoint key (the message names it)."""


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be read (the message names it)."""


class ConfigError(ValueError):
    """A model config that cannot be read or does not describe a model (the message names the file)."""


TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
STATE_DICT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
CONFIG_FILE = "geolrm_model_config.json"
# What an Orbax StandardCheckpointer save writes (names vary a little between orbax versions).
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")
_ORBAX_ENTRIES = re.compile(r"^(_CHECKPOINT_METADATA|_METADATA|_sharding|commit_success\.txt|manifest\.ocdbt|d|"
                            r"array_metadatas|descriptor|ocdbt\.process_\d+)$")


def checkpoint_problem(path) -> str | None:
    """A cheap look at a checkpoint (header only) -> None when it looks readable, else what is wrong with it.

    .safetensors: the 8-byte header length and the JSON header; .pt/.ckpt: a complete zip (torch >= 1.6) or a
    pickle; a folder: Orbax metadata."""
    path = pathlib.Path(path)
    try:
        if path.is_dir():
            if not any((path / name).exists() for name in _ORBAX_MARKERS):
                return "folder holds no Orbax checkpoint (no _CHECKPOINT_METADATA)"
            return None
        if not path.is_file():
            return "no such file"
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        suffix = path.suffix.lower()
        with open(path, "rb") as f:
            head = f.read(8)
            if suffix == ".safetensors":
                if len(head) < 8:
                    return "truncated safetensors header"
                n = int.from_bytes(head, "little")
                if not 2 <= n <= min(size - 8, 1 << 28):
                    return f"not a safetensors file (header length {n} for a {size}-byte file)"
                header = json.loads(f.read(n).decode("utf-8"))
                if not isinstance(header, dict):
                    return "not a safetensors file (header is not a JSON object)"
                return None
        if suffix in TORCH_SUFFIXES:
            if head.startswith(b"PK"):
                return None if zipfile.is_zipfile(path) else "truncated or corrupt zip (torch) checkpoint"
            if head[:1] == b"\x80":
                return None  # a legacy pickle; torch.load checks the rest
            return "not a torch checkpoint (neither a zip nor a pickle)"
        return f"unknown checkpoint format (expected a folder or {', '.join(STATE_DICT_SUFFIXES)})"
    except (OSError, ValueError, RecursionError, zipfile.BadZipFile) as err:  # a damaged header
        return f"unreadable ({type(err).__name__}: {err})"


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Flat {key: numpy array} from .safetensors, or .pt/.ckpt (torch.load(weights_only=True)).

    Raises ``CheckpointError`` naming the file when it is empty, truncated or not a state dict."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.endswith(STATE_DICT_SUFFIXES):
        raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors, .pt, .pth, .ckpt or .bin)")
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as err:  # safetensors raises SafetensorError and others for corrupt files
            raise CheckpointError(f"{path}: cannot read safetensors: {type(err).__name__}: {err}") from err
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install torch), or convert it to .safetensors") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for corrupt files
        raise CheckpointError(f"{path}: cannot read torch checkpoint: {type(err).__name__}: {err}") from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a Lightning checkpoint
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    if not out:
        raise CheckpointError(f"{path}: holds no tensors")
    return out


class _Reader:
    """Takes keys out of a state dict, remembering which were used."""

    def __init__(self, sd: Mapping[str, np.ndarray]):
        self.sd = {}
        for k, v in sd.items():
            for old, new in _HF_RENAMES:
                k = k.replace(old, new)
            self.sd[k] = v
        self.used: set[str] = set()
        self.sources: dict[tuple, str] = {}  # flax path -> first torch key, for error messages

    def take(self, key: str) -> np.ndarray:
        if key not in self.sd:
            raise ConversionError(f"missing key {key!r} in the checkpoint")
        self.used.add(key)
        return jnp.asarray(self.sd[key], dtype=jnp.float32)

    def take_stacked(self, fmt: str, n: int) -> np.ndarray:
        arrays = [self.take(fmt.format(i)) for i in range(n)]
        shapes = [tuple(a.shape) for a in arrays]
        common = max(set(shapes), key=shapes.count)
        odd = [f"{fmt.format(i)!r} {s}" for i, s in enumerate(shapes) if s != common]
        if odd:
            if shapes.count(common) == 1:  # no majority: list every layer
                odd = [f"{fmt.format(i)!r} {s}" for i, s in enumerate(shapes)]
            raise ConversionError(f"layers disagree in shape (most have {common}): key {', key '.join(odd)}")
        return jnp.stack(arrays)


def _put(tree: dict, path: tuple, value, reader: _Reader, src: str):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value
    reader.sources[path] = src


def _linear(r, params, path, key, bias=True, stack=None):
    """torch Linear (out, in) -> flax Dense kernel (in, out); `stack` = number of layers with '{}' in key."""
    get = (lambda s: r.take_stacked(key + s, stack)) if stack else (lambda s: r.take(key + s))
    name = key.format(0) if stack else key
    w = get(".weight")
    _put(params, (*path, "kernel"), jnp.swapaxes(w, -1, -2), r, name + ".weight")
    if bias:
        _put(params, (*path, "bias"), get(".bias"), r, name + ".bias")


def _norm(r, params, path, key, bias=True):
    _put(params, (*path, "scale"), r.take(key + ".weight"), r, key + ".weight")
    if bias:
        _put(params, (*path, "bias"), r.take(key + ".bias"), r, key + ".bias")


def _batchnorm(r, params, stats, path, key):
    _norm(r, params, path, key)
    _put(stats, (*path, "mean"), r.take(key + ".running_mean"), r, key + ".running_mean")
    _put(stats, (*path, "var"), r.take(key + ".running_var"), r, key + ".running_var")


def _dinov2(r, params, path, prefix, layers):
    w = r.take(prefix + "embeddings.patch_embeddings.projection.weight")
    _put(params, (*path, "patch_embed", "kernel"), w.transpose(2, 3, 1, 0), r,
         prefix + "embeddings.patch_embeddings.projection.weight")
    _put(params, (*path, "patch_embed", "bias"), r.take(prefix + "embeddings.patch_embeddings.projection.bias"), r,
         prefix + "embeddings.patch_embeddings.projection.bias")
    _put(params, (*path, "cls_token"), r.take(prefix + "embeddings.cls_token"), r, prefix + "embeddings.cls_token")
    _put(params, (*path, "pos_embed"), r.take(prefix + "embeddings.position_embeddings"), r,
         prefix + "embeddings.position_embeddings")
    for i in range(layers):
        lk, lp = f"{prefix}encoder.layer.{i}.", (*path, f"layer_{i}")
        for n in ("norm1", "norm2"):
            _norm(r, params, (*lp, n), lk + n)
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            _linear(r, params, (*lp, n), lk + "attention." + n)
        for n in ("fc1", "fc2"):
            _linear(r, params, (*lp, n), lk + "mlp." + n)
        for n in ("layer_scale1", "layer_scale2"):
            _put(params, (*lp, n), r.take(f"{lk}{n}.lambda1"), r, f"{lk}{n}.lambda1")
    _norm(r, params, (*path, "layernorm"), prefix + "layernorm")


def _encoder(r, params, stats, path, prefix, cfg):
    _dinov2(r, params, (*path, "dino"), prefix + "model.", cfg.dino_layers)
    _put(params, (*path, "deconv", "kernel"), r.take(prefix + "deconv.0.weight").transpose(2, 3, 0, 1), r,
         prefix + "deconv.0.weight")
    _batchnorm(r, params, stats, (*path, "deconv_bn"), prefix + "deconv.1")
    _put(params, (*path, "low_conv", "kernel"), r.take(prefix + "low_level_encoder.0.weight").transpose(2, 3, 1, 0),
         r, prefix + "low_level_encoder.0.weight")
    _batchnorm(r, params, stats, (*path, "low_bn"), prefix + "low_level_encoder.1")


def _transformer(r, params, path, prefix, layers):
    _put(params, (*path, "query_token"), r.take(prefix + "query_token").reshape(-1), r, prefix + "query_token")
    lp, lk = (*path, "layers"), prefix + "layers.{}."
    for n in ("wq", "wk", "wv", "wo"):
        _linear(r, params, (*lp, "self_attention", n), lk + "self_attention." + n, bias=False, stack=layers)
    for n in ("value_proj", "sampling_offsets", "attention_weights"):
        _linear(r, params, (*lp, "cross_attention", n), lk + "cross_attention.deformable_attention." + n,
                stack=layers)
    for n in ("output_proj", "cross_view_weight"):
        _linear(r, params, (*lp, "cross_attention", n), lk + "cross_attention." + n, stack=layers)
    for n in ("w1", "w2", "w3"):
        _linear(r, params, (*lp, "feed_forward", n), lk + "feed_forward." + n, bias=False, stack=layers)
    for n in ("self_attention_norm", "cross_attention_norm", "ffn_norm"):
        _put(params, (*lp, n, "weight"), r.take_stacked(lk + n + ".weight", layers), r,
             lk.format(0) + n + ".weight")
    _put(params, (*path, "norm", "weight"), r.take(prefix + "norm.weight"), r, prefix + "norm.weight")


def expected_variables(config):
    """Abstract {"params", "batch_stats"} tree (ShapeDtypeStructs) of GeoLRM(config), from jax.eval_shape."""
    return _expected_variables(config.to_json())


@functools.lru_cache(maxsize=8)
def _expected_variables(config_json: str):
    from geolrm_jax.model.geolrm import GeoLRM

    config = ml_collections.ConfigDict(json.loads(config_json))

    side = int(np.lcm(4, config.encoder.dino_patch))
    images = jnp.zeros((1, 1, side, side, 3))
    c2ws, ks = jnp.broadcast_to(jnp.eye(4), (1, 1, 4, 4)), jnp.broadcast_to(jnp.eye(3), (1, 1, 3, 3))
    mask = jnp.ones((1, 1), bool)
    return jax.eval_shape(lambda: GeoLRM(config).init(jax.random.PRNGKey(0), images, c2ws, ks, mask))


def _check_shapes(tree, expected, reader: _Reader, path=()):
    if isinstance(expected, Mapping):
        if not isinstance(tree, Mapping):
            raise ConversionError(f"parameter {'/'.join(path)}: expected a subtree")
        for k in expected:
            if k not in tree:
                raise ConversionError(f"parameter {'/'.join((*path, k))} has no source in the checkpoint")
            _check_shapes(tree[k], expected[k], reader, (*path, k))
        return
    if tuple(tree.shape) != tuple(expected.shape):
        src = reader.sources.get(path[1:], "?")
        raise ConversionError(f"key {src!r} does not fit the config: converted shape {tuple(tree.shape)}, "
                              f"parameter {'/'.join(path)} expects {tuple(expected.shape)}")


def _build(sd: Mapping, config):
    r = _Reader(sd)
    params, stats = {}, {}
    _encoder(r, params, stats, ("proposal", "encoder"), "serializer.encoder.", config.encoder)
    _transformer(r, params, ("proposal", "transformer"), "serializer.transformer.", config.proposal.layers)
    _linear(r, params, ("proposal", "upsample"), "serializer.upsample")
    _encoder(r, params, stats, ("reconstruction", "encoder"), "lrm_generator.encoder.", config.encoder)
    _transformer(r, params, ("reconstruction", "transformer"), "lrm_generator.transformer.",
                 config.reconstruction.layers)
    for i in (0, 2):
        _linear(r, params, ("reconstruction", "decoder", f"latent_decoder_{i}"),
                f"lrm_generator.renderer.latent_decoder.{i}")
    variables = {"params": params, "batch_stats": stats}
    _check_shapes(variables, expected_variables(config), r)
    leftover = sorted(k for k in r.sd if k not in r.used)
    unknown = [k for k in leftover if not any(p.search(k) for p in _UNUSED)]
    return variables, unknown


def convert_state_dict(sd: Mapping[str, np.ndarray], config, *, verbose: bool = False):
    """Flat torch state dict -> ({"params", "batch_stats"} of GeoLRM(config), list of skipped unknown keys).

    Raises ConversionError naming the first missing or misshaped key."""
    variables, unknown = _build(sd, config)
    if verbose and unknown:
        print(f"skipped {len(unknown)} unknown keys: {', '.join(unknown)}", file=sys.stderr)
    return variables, unknown


def check_key_shapes(shapes: Mapping[str, tuple], config):
    """Shape-only conversion (no weights): {torch key: shape} -> (abstract variables, unknown keys).

    Used to check that a checkpoint manifest maps completely onto `config`."""
    abstract = {k: jax.ShapeDtypeStruct(tuple(v), jnp.float32) for k, v in shapes.items()}
    unknown: list = []

    def build(sd):
        variables, unk = _build(sd, config)
        unknown.extend(unk)
        return variables

    return jax.eval_shape(build, abstract), unknown


def dinov2_from_hf(sd: Mapping[str, np.ndarray], layers: int, prefix: str = ""):
    """Params of `dinov2.Dinov2Backbone` from a plain Hugging Face DINOv2 state dict (either naming scheme:
    `attention.attention.query` or `attention.q_proj`). `prefix` e.g. "dinov2." for classification models."""
    r = _Reader(sd)
    params: dict = {}
    _dinov2(r, params, (), prefix, layers)
    return params


def save_variables(path, variables) -> None:
    """Write ``variables`` as an Orbax checkpoint at ``path`` (replaced if present; see ``main`` for the
    command's safe way of writing)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.fspath(path)), variables, force=True)


def restore_config(path):
    """The model ConfigDict that `geolrm-jax convert` stored beside the variables in checkpoint `path`."""
    source = os.path.join(os.fspath(path), CONFIG_FILE)
    return _config_from_file(source)


def restore_variables(path):
    """Read back the {"params", "batch_stats"} written by `geolrm-jax convert` (numpy/jax arrays).

    Raises ``CheckpointError`` naming the folder when it is not a readable Orbax checkpoint."""
    import orbax.checkpoint as ocp

    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(os.path.abspath(os.fspath(path)))
    except Exception as err:  # orbax/tensorstore raise many types for damaged checkpoints
        raise CheckpointError(f"{path}: cannot restore the Orbax checkpoint: {type(err).__name__}: {err}") from err
    if not isinstance(variables, Mapping) or not isinstance(variables.get("params"), Mapping):
        raise CheckpointError(f"{path}: the Orbax checkpoint holds no 'params' tree")
    return variables


def check_variables(variables, config, source) -> None:
    """Raise ``CheckpointError`` naming ``source`` and the first parameter whose shape differs from
    ``GeoLRM(config)`` (e.g. a checkpoint of another architecture)."""
    expected = expected_variables(config)
    for collection in ("params", "batch_stats"):
        want = jax.tree_util.tree_flatten_with_path(expected.get(collection, {}))[0]
        have = dict(jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0])
        for key, leaf in want:
            name = "/".join(str(getattr(k, "key", k)) for k in key)
            if key not in have:
                raise CheckpointError(f"{source}: {collection}/{name} is missing; the checkpoint does not fit "
                                      "this architecture (--model-config)")
            if tuple(np.shape(have[key])) != tuple(leaf.shape):
                raise CheckpointError(f"{source}: {collection}/{name} has shape {tuple(np.shape(have[key]))}, the "
                                      f"architecture expects {tuple(leaf.shape)} (--model-config)")


def _check_fields(config, source: str) -> None:
    """Every field of the official config present, with a value of its type (numbers positive)."""
    reference = model_config.official_model_config()
    for section in ("encoder", "proposal", "reconstruction"):
        if not isinstance(config.get(section), Mapping | ml_collections.ConfigDict):
            raise ConfigError(f"{source}: missing section '{section}'")
        for key, want in reference[section].items():
            value = config[section].get(key)
            where = f"{source}: field {section}.{key}"
            if isinstance(want, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{where} must be a positive integer, got {value!r:.40}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
                raise ConfigError(f"{where} must be a positive number, got {value!r:.40}")
    if config.get("dtype") not in ("float32", "bfloat16"):
        raise ConfigError(f"{source}: field dtype must be 'float32' or 'bfloat16', got {config.get('dtype')!r:.40}")


def _config_from_file(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: model config not found (give 'official', 'tiny' or a config.json)") from err
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: cannot read model config JSON: {type(err).__name__}: {err}") from err
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a model config is a JSON object, got {type(content).__name__}")
    if "encoder" in content and "proposal" in content:  # this project's format (geolrm_model_config.json)
        base = model_config.official_model_config().to_dict()
        try:
            config = ml_collections.ConfigDict({**base, **content})
        except Exception as err:
            raise ConfigError(f"{path}: not a model config: {type(err).__name__}: {err}") from err
    else:  # the original's format (geolrm_small/config.json)
        try:
            config = model_config.config_from_fixture(content, source=path)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        except (TypeError, KeyError, AttributeError, ZeroDivisionError) as err:
            raise ConfigError(f"{path}: not a model config: {type(err).__name__}: {err}") from err
    _check_fields(config, path)
    try:
        expected_variables(config)
    except Exception as err:  # inconsistent sizes surface while tracing the model
        raise ConfigError(f"{path}: does not describe a buildable model: {type(err).__name__}: "
                          f"{' '.join(str(err).split())[:300]}") from err
    return config


def config_from_arg(arg: str):
    """'official', 'tiny', or a config.json path (the original's geolrm_small format, or the
    geolrm_model_config.json that `geolrm-jax convert` writes) -> model ConfigDict; ``ConfigError`` if bad."""
    if arg == "official":
        return model_config.official_model_config()
    if arg == "tiny":
        return model_config.tiny_model_config()
    return _config_from_file(os.fspath(arg))


def preset_name(config) -> str | None:
    """'official' or 'tiny' when ``config`` has that preset's architecture (any dtype), else None."""
    sections = ("encoder", "proposal", "reconstruction")
    presets = (("official", model_config.official_model_config()), ("tiny", model_config.tiny_model_config()))
    for name, preset in presets:
        if all(config[s].to_dict() == preset[s].to_dict() for s in sections):
            return name
    return None


def convert_output_problem(path: pathlib.Path) -> str | None:
    """None when ``path`` is a checkpoint folder `geolrm-jax convert` wrote (an ``--overwrite`` may replace it),
    else what it holds instead."""
    if not path.is_dir():
        return "it is a file"
    names = [p.name for p in path.iterdir()]
    if CONFIG_FILE not in names:
        return f"no {CONFIG_FILE}"
    foreign = sorted(n for n in names if n != CONFIG_FILE and not _ORBAX_ENTRIES.match(n))
    return f"it holds {', '.join(foreign[:3])}" if foreign else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="geolrm-jax convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="state dict: .safetensors, .ckpt or .pt")
    parser.add_argument("output", help="output Orbax checkpoint directory")
    parser.add_argument("--config", default="official",
                        help="architecture: 'official', 'tiny' or a config.json in the geolrm_small format")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT when it is a checkpoint written by this command")
    args = parser.parse_args(argv)
    return io_atomic.run_command("geolrm-jax convert", lambda: _convert(args))


def _convert(args) -> int:
    source = pathlib.Path(args.input)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such file" if not source.exists() else f"{source}: is not a file")
    problem = checkpoint_problem(source)
    if problem:
        raise CheckpointError(f"{source}: {problem}")
    config = config_from_arg(args.config)
    config_file = None if args.config in ("official", "tiny") else args.config
    dest = io_atomic.check_destination(args.output, inputs=[source, config_file], overwrite=args.overwrite,
                                       owned=convert_output_problem)
    try:
        variables, unknown = convert_state_dict(load_state_dict(source), config)
    except ConversionError as e:
        raise ConversionError(f"{source}: {e}") from e
    if unknown:
        print(f"skipped {len(unknown)} unknown keys:", *unknown, sep="\n  ")
    with io_atomic.staged_output(dest, inner="checkpoint") as tmp:
        save_variables(tmp, variables)
        (tmp / CONFIG_FILE).write_text(config.to_json(indent=1))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    print(f"wrote {args.output}: {n:,} parameters")
    return 0
