"""Fixtures shared by the integration tests."""

# --- SLURM: the session's local two-node cluster (tests/integration/slurm_fixture.py) ---
from slurm_fixture import slurm_cluster  # noqa: F401
