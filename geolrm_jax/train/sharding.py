"""Device mesh ('data', 'fsdp') and the sharding rules of parameters, optimizer state and batches.

Mesh (`mesh_from_config`): devices are grouped in *granules* joined by the slow network (DCN): TPU slices
when the devices span several slices, else processes (hosts). `mesh.dcn_data` granules (-1 = all) are laid
along 'data'; inside each granule (fast ICI/NVLink links) the devices form `mesh.data` × `mesh.fsdp`. The global
mesh is ('data', 'fsdp') = (dcn_data · data, fsdp), built by `mesh_utils.create_hybrid_device_mesh`, so FSDP's
all-gathers stay inside a granule and only the data-parallel gradient reduction crosses DCN. With
dcn_data = 1 the whole device set is one (data, fsdp) mesh (`mesh_utils.create_device_mesh` on GPU/TPU).

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


def device_granules(devices: Sequence[jax.Device]) -> tuple[str, list[list[jax.Device]]]:
    """('slice' | 'process', devices grouped by slice_index (several TPU slices) or else by process)."""
    slices = {getattr(d, "slice_index", 0) for d in devices}
    attr = "slice_index" if len(slices) > 1 else "process_index"
    groups: dict[int, list] = {}
    for d in devices:
        groups.setdefault(getattr(d, attr), []).append(d)
    return attr.split("_")[0], [groups[k] for k in sorted(groups)]


def mesh_devices(num_devices: int = -1) -> list[jax.Device]:
    """All devices (-1), or `num_devices` taken as the first num_devices / process_count local devices of
    every process (a process cannot use another's devices, so each contributes the same number)."""
    if num_devices in (None, -1):
        return list(jax.devices())
    count = jax.process_count()
    if num_devices < 1 or num_devices % count:
        raise ValueError(f"mesh.num_devices={num_devices} must be -1 or a positive multiple of the {count} "
                         "processes")
    per_process = num_devices // count
    chosen = []
    for process in range(count):
        local = sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)
        if len(local) < per_process:
            raise ValueError(f"mesh.num_devices={num_devices} needs {per_process} devices per process; process "
                             f"{process} has {len(local)}")
        chosen += local[:per_process]
    return chosen


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None,
              dcn_data: int = 1) -> Mesh:
    """Mesh with axes ('data', 'fsdp') over `devices` (default: all devices of all processes).

    dcn_data = 1: (data, fsdp) over all devices. dcn_data > 1 (or -1 = the number of granules): `dcn_data`
    granules (slices or processes, see `device_granules`) along 'data', each holding data × fsdp devices."""
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    kind, granules = device_granules(devices)
    dcn = len(granules) if dcn_data == -1 else int(dcn_data)
    if dcn == 1:
        shape = mesh_shape(data, fsdp, len(devices))
        if devices[0].platform in ("gpu", "tpu") and len(devices) == jax.device_count():
            grid = mesh_utils.create_device_mesh(shape, devices=devices)  # topology-aware
        else:  # jax.devices() order: process by process
            grid = np.asarray(devices, dtype=object).reshape(shape)
        return Mesh(grid, MESH_AXES)
    if dcn < 1 or dcn != len(granules):
        raise ValueError(f"mesh.dcn_data={dcn_data} but the {len(devices)} devices form {len(granules)} "
                         f"{kind}(es)")
    sizes = {len(g) for g in granules}
    if len(sizes) != 1:
        raise ValueError(f"mesh: the {kind}es hold different numbers of devices {sorted(sizes)}")
    shape = mesh_shape(data, fsdp, sizes.pop())
    grid = mesh_utils.create_hybrid_device_mesh(shape, (dcn, 1), devices, process_is_granule=kind == "process",
                                                allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES)


def mesh_from_config(mesh_config) -> Mesh:
    """The mesh of a config's `mesh` fields (data, fsdp, dcn_data, num_devices)."""
    return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_devices(mesh_config.get("num_devices", -1)),
                     dcn_data=mesh_config.get("dcn_data", 1))


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


def batch_local_loss(loss_fn, mesh: Mesh):
    """`loss_fn(params, batch_stats, micro_batch, rng)` evaluated on each device's own rows of the batch
    (`jax.shard_map` over the batch axes), with loss, metrics and batch_stats averaged over the devices.

    XLA's partitioner cannot see that per-object gathers (the deformable sampling's flat-row gather, the GPU
    kernels' custom calls, the anchors' top-k) touch only their own object, and gathers their operands from
    the whole global batch; inside shard_map every op sees only local rows. Parameters enter replicated (FSDP
    shards are gathered once at the boundary) and their gradients leave summed over devices. Equal to the
    plain loss for losses that are means over objects of equal weight; the rng is folded with the device's
    batch index, so random draws differ from the unsharded call's. `aux` is dropped.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    def local(params, batch_stats, batch, rng):
        rng = jax.random.fold_in(rng, jax.lax.axis_index(BATCH_AXES))
        with nn.logical_axis_rules(()):  # the model's "batch" constraints: nothing left to split per device
            loss, (metrics, new_stats, _) = loss_fn(params, batch_stats, batch, rng)
        mean = lambda x: jax.lax.pmean(jnp.asarray(x, jnp.float32) if jnp.ndim(x) == 0 else x, BATCH_AXES)
        return mean(loss), (jax.tree.map(mean, metrics), jax.tree.map(mean, new_stats), None)

    whole, rows = PartitionSpec(), PartitionSpec(BATCH_AXES)
    # check_vma=False: scans in the model start from unvarying zeros; gradients of the replicated parameters
    # are summed over devices either way (tested against the unsharded loss).
    return jax.shard_map(local, mesh=mesh, in_specs=(whole, whole, rows, whole),
                         out_specs=(whole, (whole, whole, whole)), check_vma=False)
