"""launch.json: the launcher's record of a stage's submissions, and what it answers."""

from __future__ import annotations

import json
from pathlib import Path

from slingshot.launch.state import STATE_FILE, LaunchState


def test_an_empty_work_dir_has_no_submissions(tmp_path: Path):
    state = LaunchState.load(tmp_path)
    assert state.path == tmp_path / STATE_FILE
    assert state.submissions == [] and state.current is None and state.job_ids == []
    assert state.restarts == 0 and state.first_submitted_at is None
    assert not state.path.exists()  # loading writes nothing


def test_submissions_round_trip_through_launch_json(tmp_path: Path):
    state = LaunchState.load(tmp_path)
    first = state.add(101, "local", "first")  # job ids are kept as strings
    state.add("102", "local", "requeue")
    state.add("103_0", "slurm", "resubmit")
    on_disk = json.loads((tmp_path / "launch.json").read_text())
    assert [s["job_id"] for s in on_disk["submissions"]] == ["101", "102", "103_0"]
    assert set(on_disk["submissions"][0]) == {"job_id", "backend", "submitted_at", "reason", "ended_at"}

    again = LaunchState.load(tmp_path)
    assert again.submissions == state.submissions
    assert again.job_ids == ["101", "102", "103_0"]
    assert again.current is not None and (again.current.job_id, again.current.backend) == ("103_0", "slurm")
    assert again.restarts == 2  # submissions after the first
    assert (again.count("first"), again.count("requeue"), again.count("resubmit")) == (1, 1, 1)
    assert again.first_submitted_at == first.submitted_at
    assert first.submitted_at <= again.submissions[1].submitted_at <= again.submissions[2].submitted_at
