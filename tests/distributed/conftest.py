"""A local 2-worker Ray cluster for the distributed tests (skipped without the extra)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """Two CPUs, a 256 MiB object store, no dashboard; shut down after the session."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (the [distributed] extra)")
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
