"""Fixtures shared by the unit tests."""

# --- a real sweep of tiny demo trainings, once per session (tests/unit/sweep_fixture.py) ---
from sweep_fixture import real_sweep  # noqa: F401
