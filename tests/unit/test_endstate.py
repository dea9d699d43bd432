"""How an ended job ended, where no scheduler is needed: array records and local exit codes."""

from __future__ import annotations

from slurm.endstate import EXIT_FILE, _in_range, end_state


def test_array_records_cover_their_elements():
    assert _in_range("7_[0-1%2]", "7", 1)
    assert _in_range("7_[0-3,6]", "7", 6) and not _in_range("7_[0-3,6]", "7", 5)
    assert not _in_range("17_[0-3]", "7", 1) and not _in_range("7_2", "7", 2)


def test_local_jobs_report_their_exit_code_or_that_they_were_killed(tmp_path):
    job = {"executor": "local", "job_id": "123", "folder": str(tmp_path)}
    assert end_state(job) == "killed"  # nothing recorded: the process died outright
    (tmp_path / EXIT_FILE).write_text("2\n")
    assert end_state(job) == "exit 2"
    assert end_state({"executor": "debug", "job_id": "1", "folder": str(tmp_path)}) is None
