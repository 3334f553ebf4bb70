"""Test set-up: 8 virtual CPU devices, so sharding is exercised on every machine.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("GEOLRM_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"


def shared_path(*parts: str) -> pathlib.Path:
    """Path of a file under ../shared/fixtures.

    When it is missing, the test fails under CI=true and is skipped elsewhere: CI must never pass
    without having compared against the reference fixtures.
    """
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        message = f"reference fixture missing: {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def shared():
    return shared_path
