"""TFDS builders on a tiny generated set, bad-input handling, and the Grain pipeline (determinism, resume,
per-host split)."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from geolrm_jax.data import gobjaverse, gobjaverse_io, occupancy, pipeline

SIZE, GRID = 32, 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data_dir = gobjaverse.build_synthetic(str(root), num_objects=4, image_size=SIZE, grid_size=GRID,
                                          validation_objects=1, supersample=1)
    render = os.path.join(str(root), "synthetic_objects_render", os.path.basename(os.path.dirname(data_dir)))
    return {"root": str(root), "data_dir": data_dir, "render": render}


def _config(data_dir, **overrides):
    c = pipeline.default_data_config()
    c.data_dir = data_dir
    c.input_size, c.render_size, c.grid_size = 24, 16, GRID
    c.num_workers = 0
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_builder_records_match_the_files(built):
    src = gobjaverse.data_source(built["data_dir"], "train")
    assert len(src) == 3 and len(gobjaverse.data_source(built["data_dir"], "validation")) == 1
    record = src[1]
    name = record["object_id"].decode()
    obj_dir = os.path.join(built["render"], name)
    views = gobjaverse_io.read_object(obj_dir)
    assert len(record["png"]) == 40 and record["c2w"].shape == (40, 4, 4)
    np.testing.assert_allclose(record["c2w"], np.stack([v.c2w for v in views]), atol=1e-6)
    np.testing.assert_allclose(record["K"], np.stack([v.K for v in views]), atol=1e-6)
    for v in (0, 13, 39):
        rgba = gobjaverse_io.decode_png_rgba(record["png"][v], "t", (SIZE, SIZE))
        np.testing.assert_array_equal(rgba, views[v].rgba)
        depth = gobjaverse_io.decode_depth(record["depth_png"][v], record["depth_scale"][v], "t")
        np.testing.assert_allclose(depth, views[v].depth, atol=5e-5)
        assert np.all((depth > 0) == (views[v].depth > 0))
    expected = occupancy.occupancy_indices(np.stack([v.depth for v in views]), record["c2w"], record["K"], GRID)
    np.testing.assert_array_equal(record["occupancy"], expected)
    assert len(expected) > 50


def _corrupt_copy(built, tmp_path):
    """A copy of the layout with one good object and three bad ones (truncated PNG, NaN depth, no JSON)."""
    root = str(tmp_path / "layout")
    shutil.copytree(built["render"], root)
    names = gobjaverse_io.read_object_list(os.path.join(root, "object_list.json"))["train"]
    bad = {}
    png = gobjaverse_io.view_paths(os.path.join(root, names[0]), 3)["png"]
    with open(png, "rb") as f:
        data = f.read()
    with open(png, "wb") as f:
        f.write(data[: len(data) // 2])
    bad[names[0]] = png
    exr = gobjaverse_io.view_paths(os.path.join(root, names[1]), 30)["exr"]
    raw, depth = gobjaverse_io.read_nd_exr(exr)
    depth[2, 2] = np.nan
    normal = np.stack([-raw[..., 0], -raw[..., 2], raw[..., 1]], -1)
    gobjaverse_io.write_nd_exr(exr, normal, depth)
    bad[names[1]] = exr
    js = gobjaverse_io.view_paths(os.path.join(root, names[2]), 39)["json"]
    os.remove(js)
    bad[names[2]] = js
    good = os.path.join(root, "0", "good")
    shutil.copytree(os.path.join(built["render"], names[0]), good)
    with open(os.path.join(root, "object_list.json"), "w") as f:
        json.dump({"train": names[:3] + ["0/good"]}, f)
    return root, bad


def test_bad_files_are_skipped_logged_and_counted(built, tmp_path, caplog):
    root, bad = _corrupt_copy(built, tmp_path)
    data_dir = gobjaverse.build_gobjaverse(str(tmp_path / "out"), root, image_size=SIZE, grid_size=GRID,
                                           max_bad_fraction=0.8)
    src = gobjaverse.data_source(data_dir, "train")
    assert [src[i]["object_id"].decode() for i in range(len(src))] == ["0/good"]
    with open(os.path.join(data_dir, "bad_examples.json")) as f:
        report = json.load(f)["train"]
    assert {r["object_id"]: r["path"] for r in report} == bad
    logged = caplog.text
    assert all(path in logged for path in bad.values())
    with pytest.raises(RuntimeError, match="max_bad_fraction"):
        gobjaverse.build_gobjaverse(str(tmp_path / "out2"), root, image_size=SIZE, grid_size=GRID,
                                    max_bad_fraction=0.5)


def test_each_kind_of_bad_view_is_reported(built, tmp_path):
    name = gobjaverse_io.read_object_list(os.path.join(built["render"], "object_list.json"))["train"][0]
    obj = str(tmp_path / "obj")
    shutil.copytree(os.path.join(built["render"], name), obj)
    paths = gobjaverse_io.view_paths(obj, 0)
    view = gobjaverse_io.read_view(obj, 0, (SIZE, SIZE))
    with pytest.raises(gobjaverse_io.BadInputError, match="wrong image size"):
        gobjaverse_io.read_view(obj, 0, (SIZE + 1, SIZE + 1))
    with open(paths["json"], "w") as f:
        f.write('{"x": [1, 0, 0], "y": [0, 1')
    with pytest.raises(gobjaverse_io.BadInputError, match="00000.json"):
        gobjaverse_io.read_view(obj, 0)
    gobjaverse_io.write_view(obj, 0, view.rgba, view.normal, view.depth, view.c2w, view.K)
    with open(paths["exr"], "wb") as f:
        f.write(b"not an exr")
    with pytest.raises(gobjaverse_io.BadInputError, match="_nd.exr"):
        gobjaverse_io.read_view(obj, 0)
    normal = view.normal.copy()
    normal[1, 1, 0] = np.inf
    gobjaverse_io.write_view(obj, 0, view.rgba, normal, view.depth, view.c2w, view.K)
    with pytest.raises(gobjaverse_io.BadInputError, match="normals have 1 non-finite"):
        gobjaverse_io.read_view(obj, 0)
    gobjaverse_io.write_view(obj, 0, view.rgba[..., :3].copy(), view.normal, view.depth, view.c2w, view.K)
    with pytest.raises(gobjaverse_io.BadInputError, match="RGBA"):
        gobjaverse_io.read_view(obj, 0)
    for v in range(40):  # a blank render: valid files, no foreground
        view = gobjaverse_io.read_view(os.path.join(built["render"], name), v)
        gobjaverse_io.write_view(obj, v, view.rgba * 0, view.normal * 0, view.depth * 0, view.c2w, view.K)
    with pytest.raises(gobjaverse_io.BadInputError, match="blank render"):
        gobjaverse.object_record(obj, "blank", gobjaverse.GObjaverseConfig(name="t", grid_size=GRID))


def test_batches_follow_the_contract(built):
    it = pipeline.make_iterator(_config(built["data_dir"]), "train", seed=0, batch_size=2, process_index=0,
                                process_count=1)
    for batch in _take(it, 3):
        b = 2
        assert batch["input_images"].shape == (b, 7, 24, 24, 3) and batch["input_images"].dtype == np.float32
        assert batch["input_c2w"].shape == (b, 7, 4, 4) and batch["input_K"].shape == (b, 7, 3, 3)
        assert batch["target_images"].shape == (b, 8, 16, 16, 3)
        assert batch["target_alpha"].shape == batch["target_depth"].shape == (b, 8, 16, 16)
        assert batch["occupancy"].shape == (b, GRID, GRID, GRID) and batch["occupancy"].dtype == np.uint8
        assert batch["input_mask"].dtype == bool and batch["target_mask"].all()
        for k, v in batch.items():
            assert np.all(np.isfinite(v)), k
        n_in = batch["input_mask"].sum(1)
        assert np.all((n_in >= 1) & (n_in <= 7))
        assert np.all(batch["input_images"][~batch["input_mask"]] == 0)
        assert batch["input_images"].min() >= 0 and batch["input_images"].max() <= 1
        # empty target pixels show the background; inputs are on white
        bg = batch["background"][:, None, :]
        empty = batch["target_alpha"] == 0
        for i in range(b):
            np.testing.assert_allclose(batch["target_images"][i][empty[i]], np.broadcast_to(
                bg[i], batch["target_images"][i][empty[i]].shape), atol=1e-6)
        assert np.all(batch["input_images"][:, 0, 0, 0] == 1.0)
        assert np.all(batch["target_depth"][empty] == 0) and batch["target_depth"].max() > 0.5
        assert batch["occupancy"].sum() > 50
    assert it.metrics()["data/bad_examples"] == 0 and it.metrics()["data/examples"] == 6


def test_iterator_is_deterministic_and_resumes(built):
    cfg = _config(built["data_dir"])
    kw = dict(seed=7, batch_size=2, process_index=0, process_count=1)
    first = _take(pipeline.make_iterator(cfg, "train", **kw), 5)
    it = pipeline.make_iterator(cfg, "train", **kw)
    again = _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    for a, b in zip(first[:2], again, strict=True):
        _assert_same(a, b)
    resumed = pipeline.make_iterator(cfg, "train", **kw)
    resumed.set_state(state)
    for a, b in zip(first[2:], _take(resumed, 3), strict=True):
        _assert_same(a, b)
    # peeking (get_state, next, set_state on the live iterator) does not change what follows
    it.set_state(state)
    assert it.metrics()["data/examples"] == 4
    for a, b in zip(first[2:], _take(it, 3), strict=True):
        _assert_same(a, b)
    other = next(pipeline.make_iterator(cfg, "train", **{**kw, "seed": 8}))
    with pytest.raises(ValueError, match="built on a 32\\^3 grid"):
        pipeline.make_iterator(_config(built["data_dir"], grid_size=64), "train", **kw)
    with pytest.raises(ValueError, match="no split 'test'"):
        pipeline.make_iterator(cfg, "test", **kw)
    assert not np.array_equal(other["target_c2w"], first[0]["target_c2w"])


def test_worker_processes_resume_exactly(built):
    cfg = _config(built["data_dir"], num_workers=2)
    kw = dict(seed=3, batch_size=1, process_index=0, process_count=1)
    it = pipeline.make_iterator(cfg, "train", **kw)
    reference = _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    reference += _take(it, 2)
    it.close()
    resumed = pipeline.make_iterator(cfg, "train", **kw)
    resumed.set_state(state)
    for a, b in zip(reference[2:], _take(resumed, 2), strict=True):
        _assert_same(a, b)
    resumed.close()


def _occupancy_key(occ):
    return hashlib.sha1(np.ascontiguousarray(occ).tobytes()).hexdigest()


@pytest.mark.parametrize("process_count", [2, 3])
def test_per_host_split_covers_every_example_once(built, process_count):
    src = gobjaverse.data_source(built["data_dir"], "train")
    records = [src[i] for i in range(len(src))] * 2  # 6 records, distinct by position only through content
    expected = sorted(_occupancy_key(occupancy.densify(r["occupancy"], GRID)) for r in records)
    cfg = _config(built["data_dir"], num_epochs=1)
    seen = []
    for host in range(process_count):
        it = pipeline.make_iterator(cfg, "train", seed=0, batch_size=1, process_index=host,
                                    process_count=process_count, source=records)
        seen += [_occupancy_key(b["occupancy"][0]) for b in it]
    assert sorted(seen) == expected
    assert sorted(i for h in range(process_count) for i in pipeline.shard_indices(6, h, process_count)) == list(
        range(6))


def test_bad_records_are_skipped_and_limited(built):
    src = gobjaverse.data_source(built["data_dir"], "train")
    records = [src[i] for i in range(len(src))]
    broken = dict(records[1])
    broken["png"] = [p[:40] for p in broken["png"]]  # truncated PNGs in every view
    records[1] = broken
    cfg = _config(built["data_dir"], num_epochs=1, shuffle=False, max_bad_fraction=0.5)
    it = pipeline.make_iterator(cfg, "train", seed=0, batch_size=1, process_index=0, process_count=1,
                                source=records)
    batches = list(it)
    assert len(batches) == 2
    assert it.metrics()["data/bad_examples"] == 1 and it.metrics()["data/examples"] == 2
    good = {_occupancy_key(occupancy.densify(records[i]["occupancy"], GRID)) for i in (0, 2)}
    assert {_occupancy_key(b["occupancy"][0]) for b in batches} == good
    strict = _config(built["data_dir"], num_epochs=1, shuffle=False, max_bad_fraction=0.2)
    it = pipeline.make_iterator(strict, "train", seed=0, batch_size=1, process_index=0, process_count=1,
                                source=records)
    with pytest.raises(pipeline.BadDataError, match="1 of 3 examples were bad"):
        list(it)
