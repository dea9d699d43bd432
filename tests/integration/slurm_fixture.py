"""The session's local SLURM cluster (`slurm.local_cluster`), for tests that submit real jobs.

Tests that take the ``slurm_cluster`` fixture skip, with the reason and the daemons' log tails,
where the cluster cannot start (no root, no apt, a daemon failing).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm import local_cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[local_cluster.LocalCluster]:
    """A running two-node cluster; ``SLURM_CONF`` points at it for the whole session."""
    # Not under pytest's basetemp: munged needs every parent directory searchable by all users.
    state_dir = Path(tempfile.gettempdir()) / f"blockmix-slurm-test-{os.getpid()}"
    try:
        cluster = local_cluster.start(state_dir)
    except local_cluster.ClusterUnavailable as error:
        pytest.skip(f"LOCAL SLURM CLUSTER UNAVAILABLE: {error}")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.env.items():
            patch.setenv(name, value)
        try:
            yield cluster
        finally:
            local_cluster.stop(state_dir)
