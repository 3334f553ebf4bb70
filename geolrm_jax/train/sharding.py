"""Device mesh ('data', 'fsdp') and the sharding rules of parameters, optimizer state and batches.

Rule for every array leaf of the train state (params, batch_stats, optimizer moments): an array with at least
`min_fsdp_size` elements is split over the 'fsdp' mesh axis along its largest dimension that the fsdp size
divides (ties → the later dimension); everything else is replicated. Optimizer moments have the shapes of their
parameters, so they follow the same rule and sit next to their parameters. Batches are split along the batch
dimension over both axes ('data', 'fsdp'), i.e. FSDP devices also act as data-parallel replicas.

Activations: model code names its batch axis "batch" in `flax.linen.with_logical_constraint` where the
partitioner would otherwise carry a parameter's 'fsdp' split into the activations (the Gaussian decoder).
`activation_sharding(mesh)` (`jax.set_mesh` plus Flax logical axis rules) maps "batch" to ('data', 'fsdp')
while a step is traced; outside it those constraints are no-ops.
"""
import contextlib
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
ACTIVATION_RULES = (("batch", BATCH_AXES),)


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """Resolve (data, fsdp) sizes; at most one may be -1 (= inferred from `num_devices`)."""
    sizes = [int(data), int(fsdp)]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one of data={data}, fsdp={fsdp} may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not fit {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if sizes[0] * sizes[1] != num_devices:
        raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} != {num_devices} devices")
    return sizes[0], sizes[1]


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes ('data', 'fsdp') over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, len(devices))
    if devices[0].platform in ("gpu", "tpu") and len(devices) == jax.device_count():
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    else:
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def param_partition_spec(shape: Sequence[int], fsdp_size: int, min_fsdp_size: int) -> PartitionSpec:
    """PartitionSpec of one state leaf under the FSDP rule (see module docstring)."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_fsdp_size:
        return PartitionSpec()
    candidates = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda i: (shape[i], i))
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return PartitionSpec(*spec)


def state_shardings(abstract_state, mesh: Mesh, min_fsdp_size: int = 2**14):
    """NamedShardings for every leaf of a pytree of arrays / ShapeDtypeStructs."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, param_partition_spec(np.shape(x), fsdp, min_fsdp_size)), abstract_state
    )


def batch_sharding(mesh: Mesh, leading_dims: int = 1) -> NamedSharding:
    """Sharding of a batch leaf whose batch axis comes after `leading_dims - 1` unsplit axes.

    With gradient accumulation the host batch is (accum, B, ...) → leading_dims=2.
    """
    return NamedSharding(mesh, PartitionSpec(*([None] * (leading_dims - 1)), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch, mesh: Mesh, leading_dims: int = 1):
    """Assemble per-process numpy batches into global jax.Arrays split over ('data', 'fsdp').

    Each process passes its own slice (process-local data); single-process this is a device_put.
    """
    sharding = batch_sharding(mesh, leading_dims)
    n = mesh.shape["data"] * mesh.shape["fsdp"]

    def put(x):
        x = np.asarray(x)
        global_b = x.shape[leading_dims - 1] * jax.process_count()
        if global_b % n:
            raise ValueError(f"batch size {global_b} is not divisible by the {n} devices of the mesh")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh):
    """Context in which the model's logical activation constraints ("batch") bind to `mesh`'s batch axes."""
    import flax.linen as nn

    with jax.set_mesh(mesh), nn.logical_axis_rules(ACTIVATION_RULES):
        yield


def call_with_activation_sharding(fn, mesh: Mesh):
    """`fn` (a jitted function) called inside `activation_sharding(mesh)`, so that its tracing sees the rules
    (`jax.set_mesh` cannot be entered inside a trace)."""
    def wrapped(*args, **kwargs):
        with activation_sharding(mesh):
            return fn(*args, **kwargs)
    wrapped.jitted = fn
    return wrapped
