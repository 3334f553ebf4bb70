"""tools/scaling_model.py's reading of compiled programs: collectives, their loop trip counts, replica groups
and the bytes each device moves over fast (inside a granule) and slow links."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("scaling_model", REPO / "tools" / "scaling_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replica_groups_and_shapes(tool):
    assert tool.parse_replica_groups("replica_groups=[2,4]<=[4,2]T(1,0), x", 8) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert tool.parse_replica_groups("replica_groups=[1,8]<=[8]", 8) == [list(range(8))]
    assert tool.parse_replica_groups("replica_groups={{0,1},{2,3}}, to_apply", 4) == [[0, 1], [2, 3]]
    assert tool.shape_bytes("(f32[8,4]{1,0}, bf16[3])") == 8 * 4 * 4 + 3 * 2
    assert tool.parse_mesh("64:8x1x8") == (64, 8, 1, 8)


def test_collectives_in_a_loop_are_counted_per_iteration(tool):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("d",))

    def body(x):
        def step(carry, _):
            return jax.lax.psum(jnp.sin(carry), "d") + carry, None
        return jax.lax.scan(step, x, None, length=5)[0]

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec("d"), out_specs=PartitionSpec("d")))
    x = jax.ShapeDtypeStruct((8 * 16, 32), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("d")))
    ops = [op for op in tool.collectives(f.lower(x).compile().as_text(), 8) if op["kind"] == "all-reduce"]
    assert sum(op["count"] for op in ops) == 5
    block = 16 * 32 * 4
    assert all(op["bytes"] == block and len(max(op["groups"], key=len)) == 8 for op in ops)
    fast, slow = tool.link_bytes(ops[0], granule=4)   # 8 devices = 2 granules of 4
    assert fast == pytest.approx(2 * 3 / 4 * block) and slow == pytest.approx(2 * 1 / 2 * block / 4)
    assert tool.link_bytes(ops[0], granule=8) == (pytest.approx(2 * 7 / 8 * block), 0.0)
    summary = tool.summarize_collectives(ops, granule=4)
    assert summary["slow_ops"] == 5 and summary["slow_bytes"] == pytest.approx(5 * slow)
