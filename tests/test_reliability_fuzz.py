"""Fuzz tests (Hypothesis) of every loader a user feeds: random, truncated and zero-byte inputs give the loader's
one error type with a message naming the file, never another exception, a crash or a hang.

Derandomized with few examples and a deadline, so CI runs the same cases every time in a few seconds each."""

import io
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from geolrm_jax import inputs
from geolrm_jax.data import gobjaverse_io
from geolrm_jax.model import convert

# GEOLRM_FUZZ_EXAMPLES raises the count for a longer local search (CI keeps the default).
EXAMPLES = int(os.environ.get("GEOLRM_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize="GEOLRM_FUZZ_EXAMPLES" not in os.environ,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REPO = pathlib.Path(__file__).resolve().parents[1]


def damaged(valid: bytes):
    """Random bytes, a zero-byte file, a truncation of ``valid`` or ``valid`` with a few bytes overwritten."""

    def overwrite(args):
        data, edits = bytearray(valid), args
        for position, value in edits:
            data[position % len(data)] = value
        return bytes(data)

    return st.one_of(
        st.binary(max_size=2048),
        st.just(b""),
        st.integers(0, max(len(valid) - 1, 0)).map(lambda n: valid[:n]),
        st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8).map(overwrite),
    )


def png_bytes(size=16) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 4), dtype=np.uint8), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size=16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _names(err: BaseException, path) -> bool:
    return str(path) in str(err) or pathlib.Path(path).name in str(err)


# ------------------------------------------------------------------------------------------------------------
# Images (posed folders, SV3D frames, Zero123++ grids)


@FUZZ
@given(data=st.one_of(damaged(png_bytes()), damaged(jpeg_bytes())))
def test_fuzz_image_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("img") / "000.png"
    path.write_bytes(data)
    try:
        image = inputs.read_image(path)
    except inputs.InputError as err:
        assert _names(err, path)
        return
    assert image.ndim == 3 and image.shape[-1] == 3 and np.all(np.isfinite(image))


# ------------------------------------------------------------------------------------------------------------
# cameras.json / transforms.json

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20)
MATRIX = st.lists(st.lists(st.floats(-3, 3) | st.integers(-2, 2), min_size=3, max_size=4), min_size=3, max_size=4)
FRAME = st.fixed_dictionaries({}, optional={
    "file": st.sampled_from(["000.png", "missing.png", "", "../000.png"]) | JSON_VALUES,
    "file_path": st.sampled_from(["./000", "000.png", "nope"]) | JSON_VALUES,
    "c2w": MATRIX | JSON_VALUES, "transform_matrix": MATRIX | JSON_VALUES, "K": MATRIX | JSON_VALUES,
    "camera_angle_x": st.floats() | JSON_VALUES, "fl_x": st.floats() | JSON_VALUES, "w": JSON_VALUES,
    "h": JSON_VALUES})
CAMERA_DOCS = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries({"frames": st.lists(FRAME, max_size=3)},
                          optional={"K": MATRIX | JSON_VALUES, "camera_angle_x": st.floats() | JSON_VALUES})
    .map(json.dumps),
)


def _valid_cameras_json() -> str:
    from geolrm_jax import geometry

    c2w = np.asarray(geometry.orbit_c2w(1, elevation_deg=20.0, radius=1.5))[0]
    K = np.asarray(geometry.fov_to_intrinsics(39.6))
    return json.dumps({"frames": [{"file": "000.png", "c2w": c2w.tolist(), "K": K.tolist()}]})


@FUZZ
@given(name=st.sampled_from(inputs.CAMERA_FILES),
       text=st.one_of(CAMERA_DOCS, damaged(_valid_cameras_json().encode()).map(
           lambda b: b.decode("utf-8", "replace"))),
       raw=st.one_of(st.none(), damaged(_valid_cameras_json().encode())))
def test_fuzz_camera_files(tmp_path_factory, name, text, raw):
    folder = tmp_path_factory.mktemp("posed")
    (folder / "000.png").write_bytes(png_bytes(16))
    camera_file = folder / name
    if raw is None:
        camera_file.write_text(text)
    else:
        camera_file.write_bytes(raw)
    try:
        views = inputs.load_views(folder, 16, "posed", warn=lambda message: None)
    except inputs.InputError as err:
        assert str(folder) in str(err)
        return
    assert views.images.shape[1:] == (16, 16, 3) and np.all(np.isfinite(views.c2w))


# ------------------------------------------------------------------------------------------------------------
# Videos (SV3D orbits; decoded by ffmpeg)


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 1))
@given(data=st.one_of(st.binary(max_size=4096), st.just(b"")))
def test_fuzz_video_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("video") / "orbit.mp4"
    path.write_bytes(data)
    with pytest.raises(inputs.InputError) as caught:
        inputs.read_video_frames(path)
    assert _names(caught.value, path)


# ------------------------------------------------------------------------------------------------------------
# GObjaverse files (eval and dataset building): EXR, PNG, camera JSON, object list


def _exr_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("exr") / "v_nd.exr"
    rng = np.random.default_rng(0)
    gobjaverse_io.write_nd_exr(str(path), rng.normal(size=(8, 8, 3)), rng.uniform(1, 2, (8, 8)))
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_exr_reader(tmp_path_factory, data):
    valid = _exr_bytes(tmp_path_factory)
    path = tmp_path_factory.mktemp("exr") / "00000_nd.exr"
    path.write_bytes(data.draw(damaged(valid)))
    try:
        normal, depth = gobjaverse_io.read_nd_exr(str(path))
    except gobjaverse_io.BadInputError as err:
        assert _names(err, path)
        return
    assert np.all(np.isfinite(depth)) and normal.shape == (*depth.shape, 3)


@FUZZ
@given(png=damaged(png_bytes()), camera=st.one_of(JSON_VALUES.map(json.dumps), st.binary(max_size=256)),
       object_list=st.one_of(JSON_VALUES.map(json.dumps), st.binary(max_size=256)))
def test_fuzz_gobjaverse_view_and_object_list(tmp_path_factory, png, camera, object_list):
    root = tmp_path_factory.mktemp("gobj")
    paths = gobjaverse_io.view_paths(root / "obj", 0)
    os.makedirs(os.path.dirname(paths["png"]))
    pathlib.Path(paths["png"]).write_bytes(png)
    pathlib.Path(paths["json"]).write_bytes(camera if isinstance(camera, bytes) else camera.encode())
    with pytest.raises(gobjaverse_io.BadInputError):  # the EXR is missing, if nothing else
        gobjaverse_io.read_view(str(root / "obj"), 0)
    listing = root / "object_list.json"
    listing.write_bytes(object_list if isinstance(object_list, bytes) else object_list.encode())
    try:
        splits = gobjaverse_io.read_object_list(listing)
    except gobjaverse_io.BadInputError as err:
        assert _names(err, listing)
        return
    assert all(isinstance(n, str) for names in splits.values() for n in names)


@FUZZ
@given(data=damaged(png_bytes()),
       depth=damaged(gobjaverse_io.encode_depth(np.linspace(0, 2, 64, dtype=np.float32).reshape(8, 8))[0]))
def test_fuzz_record_decoders(data, depth):
    """What the input pipeline decodes from each TFDS record: a bad one is a BadInputError (skipped, counted)."""
    for decode in (lambda: gobjaverse_io.decode_png_rgba(data, "rec png", (16, 16)),
                   lambda: gobjaverse_io.decode_depth(depth, 0.01, "rec depth")):
        try:
            decode()
        except gobjaverse_io.BadInputError as err:
            assert "rec " in str(err)


# ------------------------------------------------------------------------------------------------------------
# Checkpoints: state dicts and Orbax folders


def _state_dict_bytes(tmp_path_factory, suffix: str) -> bytes:
    path = tmp_path_factory.mktemp("sd") / f"w{suffix}"
    weights = {"serializer.upsample.weight": np.arange(12, dtype=np.float32).reshape(3, 4)}
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(weights, str(path))
    else:
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, str(path))
    return path.read_bytes()


@FUZZ
@given(suffix=st.sampled_from([".safetensors", ".pt", ".ckpt"]), data=st.data())
def test_fuzz_state_dict_loader(tmp_path_factory, suffix, data):
    if suffix != ".safetensors":
        pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("ckpt") / f"model{suffix}"
    path.write_bytes(data.draw(damaged(_state_dict_bytes(tmp_path_factory, suffix))))
    try:
        state = convert.load_state_dict(path)
    except convert.CheckpointError as err:
        assert _names(err, path)
        return
    assert all(isinstance(v, np.ndarray) for v in state.values())


@pytest.fixture(scope="module")
def orbax_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("orbax") / "ckpt"
    convert.save_variables(path, {"params": {"w": np.arange(6, dtype=np.float32)}, "batch_stats": {}})
    return path


@FUZZ
@given(data=st.data())
def test_fuzz_orbax_checkpoint(tmp_path_factory, orbax_checkpoint, data):
    files = sorted(p for p in orbax_checkpoint.rglob("*") if p.is_file())
    victim = data.draw(st.sampled_from(files))
    folder = tmp_path_factory.mktemp("orbax_copy") / "ckpt"
    shutil.copytree(orbax_checkpoint, folder)
    target = folder / victim.relative_to(orbax_checkpoint)
    target.write_bytes(data.draw(damaged(victim.read_bytes())))
    try:
        variables = convert.restore_variables(folder)
    except convert.CheckpointError as err:
        assert _names(err, folder)
        return
    assert np.asarray(variables["params"]["w"]).shape == (6,)


# ------------------------------------------------------------------------------------------------------------
# Configs: model config JSON (--model-config, geolrm_model_config.json) and training config files


def _model_config_json() -> str:
    from geolrm_jax.model.config import tiny_model_config

    return tiny_model_config().to_json()


@FUZZ
@given(text=st.one_of(JSON_VALUES.map(json.dumps), damaged(_model_config_json().encode()).map(
    lambda b: b.decode("utf-8", "replace"))))
def test_fuzz_model_config(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(text)
    try:
        config = convert.config_from_arg(str(path))
    except convert.ConfigError as err:
        assert _names(err, path)
        return
    assert config.encoder.dino_patch >= 1


TRAIN_CONFIG = (REPO / "configs" / "train_tiny.py").read_bytes()


@settings(FUZZ, max_examples=max(EXAMPLES * 2 // 3, 1))
@given(data=st.one_of(st.integers(0, len(TRAIN_CONFIG) - 1).map(lambda n: TRAIN_CONFIG[:n]),
                      st.binary(max_size=512), st.just(b"")))
def test_fuzz_training_config_file(tmp_path_factory, capsys, data):
    from geolrm_jax.train import main as train_main

    folder = tmp_path_factory.mktemp("train_cfg")
    path = folder / "config.py"
    path.write_bytes(data)
    workdir = folder / "run"
    assert train_main.main([f"--config={path}", f"--workdir={workdir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geolrm-jax train: error:")
    assert not workdir.exists()


# ------------------------------------------------------------------------------------------------------------
# TFDS records: a built dataset folder whose files are damaged


@pytest.fixture(scope="module")
def built_dataset(tmp_path_factory):
    from geolrm_jax.data import gobjaverse

    root = tmp_path_factory.mktemp("dataset")
    return pathlib.Path(gobjaverse.build_synthetic(str(root), num_objects=2, image_size=16, grid_size=8,
                                                   validation_objects=1, supersample=1))


@settings(FUZZ, max_examples=max(EXAMPLES * 5 // 6, 1))
@given(data=st.data())
def test_fuzz_tfds_dataset_files(tmp_path_factory, built_dataset, data):
    from geolrm_jax.train import trainer

    files = sorted(p.name for p in built_dataset.iterdir() if p.is_file())
    victim = data.draw(st.sampled_from(files))
    folder = tmp_path_factory.mktemp("ds_copy") / "ds"
    shutil.copytree(built_dataset, folder)
    content = (folder / victim).read_bytes()
    (folder / victim).write_bytes(data.draw(damaged(content)))
    try:
        trainer._check_dataset(str(folder), "train", 8)
    except ValueError as err:
        assert str(folder) in str(err) and "\n" not in str(err)
