"""tools/profile_inference.py: Perfetto trace parsing, kernel kinds, and a CPU smoke run of the tool."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import profile_inference  # noqa: E402


def test_device_events_keep_only_device_processes(tmp_path):
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 1, "name": "PjitFunction(f)", "dur": 500.0},
        {"ph": "X", "pid": 2, "name": "cutlass_80_tensorop_gemm", "dur": 12.5},
        {"ph": "X", "pid": 2, "name": "loop_add_fusion", "dur": 3.0},
        {"ph": "i", "pid": 2, "name": "instant"},
    ]
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert profile_inference.device_events(str(tmp_path)) == [("cutlass_80_tensorop_gemm", 12.5),
                                                              ("loop_add_fusion", 3.0)]
    with pytest.raises(FileNotFoundError, match="perfetto_trace"):
        profile_inference.device_events(str(tmp_path / "plugins" / "missing"))


@pytest.mark.parametrize("name, kind", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention (cuDNN)"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"),
    ("_forward_kernel", "deformable (Pallas)"),
    ("DeviceRadixSortOnesweepKernel", "sort"),
    ("input_reduce_fusion_3", "reduction"),
    ("loop_multiply_fusion", "fusion (XLA)"),
    ("something_else", "other"),
])
def test_kernel_kinds(name, kind):
    assert profile_inference.kernel_kind(name) == kind


@pytest.mark.slow
def test_tool_runs_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "profile_inference.py"), "--model-config", "tiny",
                           "--views", "2", "--size", "28", "--repeats", "1", "--anchors", "surface",
                           "--out", str(tmp_path)], capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== reconstruction: wall" in done.stdout
    data = json.loads((tmp_path / "profile_bfloat16_surface.json").read_text())
    assert set(data["2"]) == {"encoder", "proposal", "reconstruction", "decoding", "end_to_end"}
    assert all(v["wall_s"] > 0 for v in data["2"].values())


def test_idle_gaps_between_kernels():
    events = [("a", 0.0, 10.0), ("b", 12.0, 5.0), ("c", 13.0, 20.0), ("d", 40.0, 1.0), ("e", 9000.0, 1.0)]
    gaps = profile_inference.idle_gaps(events, min_gap_us=1.0, max_gap_us=100.0)
    # a ends at 10, b starts at 12 (2 µs); c overlaps b and ends at 33, d starts at 40 (7 µs); e is a new run
    assert gaps == {("a", "b"): (2.0, 1), ("c", "d"): (7.0, 1)}


def test_run_spans_split_runs_at_the_longest_gaps():
    events = [("a", 0.0, 10.0), ("b", 12.0, 5.0), ("c", 900.0, 4.0), ("d", 904.0, 6.0), ("e", 901.0, 2.0)]
    assert profile_inference.run_spans(events, runs=2) == [17.0, 10.0]
    assert profile_inference.run_spans(events, runs=1) == [910.0]
    assert profile_inference.run_spans([], runs=3) == []
