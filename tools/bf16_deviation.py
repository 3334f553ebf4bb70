"""bf16 deviation per output, ours beside the original's: each one's bf16 run against its own float32 run.

    python tools/bf16_deviation.py [--device cpu|cuda] [--fixture DIR] [--json PATH] [generator options]

The original side comes from `tools/make_parity_fixture_released.py --autocast` (released widths, random
perturbed weights; run in a subprocess on `--device`, or read from an existing `--fixture DIR` made with
--autocast): its run under torch's bf16 autocast (`torch.autocast(device)`, the Gaussian decoder outside it)
against its float32 run. Our side: `GeoLRM` with `config.dtype = "bfloat16"` against float32 (HIGHEST matmul
precision; bf16 at the default precision), on the same weights and inputs, on JAX's default backend, which
must be the same kind of device (cpu ↔ cpu, cuda ↔ gpu).

Both self-attention paths are measured, each against its own float32 reference:
  heads   the original's float32 branch (attention over the heads of each token; what the released inference
          config runs, `attention_over_heads=True`), forced under autocast for the original;
  tokens  its flash-attn branch (attention over anchors; what its bf16 mode runs as shipped), forced in float32
          for its reference; ours with `attention_over_heads=False`.
Error = max|bf16 − fp32| / max|fp32| per array; gaussians are also split into their channel groups. Prints a
markdown table; --json writes the numbers and the devices. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS)
import check_parity  # noqa: E402

PATHS = {  # path -> (original fp32 file, original autocast file, ours attention_over_heads)
    "heads": ("outputs.npz", "outputs_autocast_heads.npz", True),
    "tokens": ("outputs_fp32_tokens.npz", "outputs_autocast.npz", False),
}
GAUSSIAN_GROUPS = {"xyz": slice(0, 3), "opacity": slice(3, 4), "scale": slice(4, 7), "quat": slice(7, 11),
                   "rgb": slice(11, 14)}


def with_gaussian_groups(outputs: dict) -> dict:
    """outputs plus `gaussians[group]` arrays for the channel groups of the (B, N, 14) Gaussians."""
    out = dict(outputs)
    for group, cols in GAUSSIAN_GROUPS.items():
        out[f"gaussians[{group}]"] = np.asarray(outputs["gaussians"])[..., cols]
    return out


def relative_errors(ours: dict, reference: dict) -> dict[str, float]:
    return {name: rel for name, (_, rel) in check_parity.compare(with_gaussian_groups(ours),
                                                                 with_gaussian_groups(reference)).items()}


def load_npz(fixture: str, name: str) -> dict:
    path = os.path.join(fixture, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing {path} (make the fixture with --autocast)")
    return dict(np.load(path))


def measure(fixture: str) -> dict:
    """{path: {output: {"original": rel, "ours": rel, "ours_vs_original_fp32": rel}}} for the fixture."""
    import jax

    result = {}
    for path, (ref_name, autocast_name, over_heads) in PATHS.items():
        reference, autocast = load_npz(fixture, ref_name), load_npz(fixture, autocast_name)
        with jax.default_matmul_precision("highest"):
            ours32 = check_parity.compute_outputs(fixture, "float32", attention_over_heads=over_heads)
        ours16 = check_parity.compute_outputs(fixture, "bfloat16", attention_over_heads=over_heads)
        original = relative_errors(autocast, reference)
        ours = relative_errors(ours16, ours32)
        versus = relative_errors(ours16, reference)
        result[path] = {name: {"original": original[name], "ours": ours[name], "ours_vs_original_fp32": versus[name]}
                        for name in original}
    return result


def format_table(result: dict) -> str:
    names = list(next(iter(result.values())))
    head = "| output | " + " | ".join(f"original ({p}) | ours ({p})" for p in result) + " |"
    lines = [head, "|---|" + "---|---|" * len(result)]
    for name in names:
        cells = " | ".join(f"{result[p][name]['original']:.2e} | {result[p][name]['ours']:.2e}" for p in result)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of both runs")
    p.add_argument("--fixture", help="existing fixture made with --autocast (else one is made in a temp dir)")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--official", help="passed to the generator")
    p.add_argument("--seed", type=int, default=0, help="passed to the generator")
    args = p.parse_args(argv)
    import jax

    backend = jax.default_backend()
    if (args.device == "cuda") != (backend == "gpu"):
        print(f"error: --device {args.device} but JAX runs on {backend}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bf16_deviation_") as tmp:
        fixture = args.fixture
        if fixture is None:
            fixture = os.path.join(tmp, "fixture")
            cmd = [sys.executable, os.path.join(TOOLS, "make_parity_fixture_released.py"), "--out", fixture,
                   "--autocast", "--device", args.device, "--seed", str(args.seed)]
            cmd += ["--official", args.official] if args.official else []
            if subprocess.run(cmd).returncode != 0:
                print("error: the fixture generator failed", file=sys.stderr)
                return 2
        try:
            result = measure(fixture)
        except (FileNotFoundError, ValueError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        with open(os.path.join(fixture, "config.json")) as f:
            generator = json.load(f).get("generator", {})
    devices = {"original": generator.get("device"), "torch": generator.get("torch"),
               "autocast": generator.get("autocast"), "ours": jax.devices()[0].device_kind, "jax": jax.__version__}
    print(f"bf16 vs float32, max|a-b|/max|b|; original: {devices['original']} ({devices['autocast']}, torch "
          f"{devices['torch']}), ours: {devices['ours']} (jax {devices['jax']})")
    print(format_table(result))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"devices": devices, "relative_error": result}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
