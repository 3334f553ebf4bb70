"""What the benchmarks under tools/bench/ share: timing of synchronized calls, the device, JSON results.

Run a benchmark as a script (``python tools/bench/deformable.py ...``); its folder is then on ``sys.path``, so
``import harness`` finds this module.
"""
from __future__ import annotations

import json
import os
import statistics
import time


def call_times(fn, repeats: int, sync=None, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn()``, each waited for with ``sync(result)`` (default
    ``jax.block_until_ready``), after ``warmup`` untimed calls (compilation, caches)."""
    if sync is None:
        import jax

        sync = jax.block_until_ready
    for _ in range(warmup):
        result = fn()
        sync(result)
        del result
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        sync(result)
        times.append(time.perf_counter() - t0)
        del result
    return times


def median_ms(fn, repeats: int, sync=None, warmup: int = 1) -> float:
    """Median milliseconds of :func:`call_times`."""
    return statistics.median(call_times(fn, repeats, sync, warmup)) * 1e3


def device_info() -> dict:
    """The device and software a result was measured with, and when (UTC)."""
    import jax

    return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_json(path, payload) -> None:
    """Write ``payload`` as JSON next to ``path`` and move it into place (a reader never sees half a file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
