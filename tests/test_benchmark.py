"""`geolrm-jax bench`: the timed stages compose to GeoLRM.__call__; the report table."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from geolrm_jax import benchmark, inference
from geolrm_jax.model import config as model_config
from geolrm_jax.model.geolrm import GeoLRM


def test_stages_compose_to_the_full_model():
    config = model_config.tiny_model_config()
    config.proposal.capacity = config.proposal.grid_size ** 3
    variables = inference.random_variables(config, seed=3)
    # Every voxel occupied and room for all: anchor selection has no near-tie at its boundary.
    upsample = variables["params"]["proposal"]["upsample"]
    upsample["bias"] = upsample["bias"] + 10.0
    images, c2ws, Ks, view_mask = benchmark.example_inputs(2, 28, seed=1)
    stages = benchmark.build_stages(config, 28)
    (fp, fr), enc = benchmark._time_stage(stages.encoder, (variables, images, c2ws, Ks), 1)
    (anchors, mask), _ = benchmark._time_stage(stages.proposal, (variables, fp, c2ws, Ks, view_mask), 1)
    latents, _ = benchmark._time_stage(stages.reconstruction, (variables, fr, c2ws, Ks, view_mask, anchors, mask),
                                       1)
    gaussians, dec = benchmark._time_stage(stages.decoding, (variables, latents, anchors, mask), 1)
    assert enc.seconds > 0 and enc.memory_bytes > 0 and dec.memory_bytes > 0

    want = jax.jit(GeoLRM(config).apply)(variables, images, c2ws, Ks, view_mask)
    assert int(mask.sum()) == config.proposal.capacity
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(want["anchor_mask"]))
    np.testing.assert_allclose(np.asarray(anchors), np.asarray(want["anchors"]), atol=1e-6)
    for name in ("means", "scales", "quats", "opacities", "rgbs"):
        np.testing.assert_allclose(np.asarray(getattr(gaussians, name)), np.asarray(getattr(want["gaussians"], name)),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_table_has_side_by_side_ratios():
    def row(dtype, total):
        return {"views": 4, "size": 448, "dtype": dtype, "time_s": dict.fromkeys(benchmark.STAGES, total / 4),
                "stage_memory_bytes": dict.fromkeys(benchmark.STAGES, 2**20), "total_s": total,
                "peak_bytes": None}

    table = benchmark.format_table([row("float32", 0.2), row("bfloat16", 0.1)])
    lines = table.splitlines()
    assert "fp32/bf16" in table and "n/a on CPU" in table
    side = lines[-1].split()
    assert side[:5] == ["4", "448", "|", "200.0", "100.0"] and side[5] == "2.00"


def test_bench_rejects_bad_sizes():
    done = subprocess.run([sys.executable, "-m", "geolrm_jax.benchmark", "--sizes", "100"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and "multiples of 28" in done.stderr


def test_budget_stops_before_new_configurations(capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert benchmark.main(["--model-config", "tiny", "--sizes", "28", "--views", "1", "2", "--budget-s", "0",
                           "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "not run: 1 views 28 px bfloat16, 2 views 28 px bfloat16" in captured.err
    assert not out.exists()  # nothing measured, nothing written


def test_surface_anchors_lie_on_the_shell_in_raster_order():
    config = model_config.tiny_model_config()
    g, scale = config.proposal.grid_size, config.proposal.xyz_scale
    anchors, mask = benchmark.surface_anchors(config.proposal, 64, radius=0.7)
    anchors, mask = np.asarray(anchors)[0], np.asarray(mask)[0]
    assert mask.all() and anchors.shape == (64, 3)
    radius = np.linalg.norm(anchors / scale, axis=-1)
    assert np.all(np.abs(radius - 0.7) <= 2.0 / (g - 1) + 1e-6)
    # raster (x, y, z) order: the flat voxel index increases
    idx = np.rint((anchors / scale + 1) * (g - 1) / 2).astype(int)
    flat = (idx[:, 0] * g + idx[:, 1]) * g + idx[:, 2]
    assert np.all(np.diff(flat) > 0)
    many_anchors, many_mask = benchmark.surface_anchors(config.proposal, 10_000)
    assert 0 < int(many_mask.sum()) < 10_000 and not np.asarray(many_anchors)[0, -1].any()


def test_cuda_cache_config_tool_refuses_without_a_gpu(tmp_path):
    """tools/cuda_cache_config.py never runs the wrapped script without a CUDA GPU, and says why."""
    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    tool = Path(__file__).resolve().parents[1] / "tools" / "cuda_cache_config.py"
    proc = subprocess.run([sys.executable, str(tool), "--prefer", "l1", str(script)],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0
    assert "cuda_cache_config: no GPU visible to JAX" in proc.stderr
    assert not marker.exists()
