"""The TPU kernels' ``interpret`` argument, shared by every kernel module in this package."""

from __future__ import annotations

from jax.experimental.pallas import tpu as pltpu


def interpret_arg(interpret):
    """pallas_call's interpret argument from the kernels' ``interpret``: False (compile for TPU); True (the TPU
    interpret mode with race detection: simulated VMEM/SMEM/DMAs/semaphores, eager calls only, its io
    callbacks cannot be lowered inside an enclosing jit); "hlo" (the HLO interpreter, which works under every
    transform: what "pallas_tpu_interpret" runs); or an explicit pltpu.InterpretParams."""
    if interpret is True:
        return pltpu.InterpretParams(detect_races=True)
    if interpret == "hlo":
        return True
    return interpret or False
