"""Run a benchmark script with a chosen L1 / shared-memory preference on the GPU's CUDA context.

On Hopper, L1 and shared memory share one 256 KB array per SM; the split (the "carveout") follows the
launched kernel's preference, else the context's (`cuCtxSetCacheConfig`). This wrapper sets the context's
preference through the driver API (ctypes, libcuda; the `_v2` entry points that cuda.h maps the names to),
after JAX has created its context, then runs the given script in the same process, and reports the
preference before and after (so a run whose setting was overridden by someone else says so).

    python tools/cuda_cache_config.py --prefer l1 tools/bench/deformable.py --rows 21:560px:16384 ...

`--prefer none` only reports. Needs a CUDA GPU; CPU-only machines get a clear error.
"""

from __future__ import annotations

import argparse
import ctypes
import runpy
import sys

PREFERENCES = {"none": 0, "shared": 1, "l1": 2, "equal": 3}
NAMES = {v: k for k, v in PREFERENCES.items()}


def _libcuda():
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise SystemExit(f"cuda_cache_config: libcuda.so.1 not found ({e}); this tool needs a CUDA GPU") from e


def _check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"cuda_cache_config: {what} failed with CUresult {result}")


def context_cache_config(prefer: str | None = None, device_ordinal: int = 0) -> tuple[str, str]:
    """(preference before, after) on the primary context of `device_ordinal`; sets `prefer` if given."""
    cuda = _libcuda()
    device, context = ctypes.c_int(), ctypes.c_void_p()
    _check(cuda.cuInit(0), "cuInit")
    _check(cuda.cuDeviceGet(ctypes.byref(device), device_ordinal), "cuDeviceGet")
    _check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    _check(cuda.cuCtxPushCurrent_v2(context), "cuCtxPushCurrent_v2")
    try:
        before = ctypes.c_int()
        _check(cuda.cuCtxGetCacheConfig(ctypes.byref(before)), "cuCtxGetCacheConfig")
        if prefer is not None and prefer != "none":
            _check(cuda.cuCtxSetCacheConfig(PREFERENCES[prefer]), "cuCtxSetCacheConfig")
        after = ctypes.c_int()
        _check(cuda.cuCtxGetCacheConfig(ctypes.byref(after)), "cuCtxGetCacheConfig")
    finally:
        cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        cuda.cuDevicePrimaryCtxRelease_v2(device)
    return NAMES.get(before.value, str(before.value)), NAMES.get(after.value, str(after.value))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefer", choices=sorted(PREFERENCES), required=True)
    parser.add_argument("script", help="python script to run after setting the preference")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        raise SystemExit("cuda_cache_config: no GPU visible to JAX")
    jnp.zeros(8).block_until_ready()  # JAX's context exists and has run a kernel
    before, after = context_cache_config(args.prefer)
    print(f"cuda_cache_config: context cache preference {before} -> {after}", flush=True)
    sys.argv = [args.script, *args.script_args]
    try:
        runpy.run_path(args.script, run_name="__main__")
    finally:
        _, final = context_cache_config()
        print(f"cuda_cache_config: context cache preference at exit: {final}", flush=True)


if __name__ == "__main__":
    main()
