"""The launcher's record of a stage's jobs, kept in the work dir (never a Snakemake output).

It is what lets a rerun of Snakemake re-attach to a job that is still pending or
running instead of submitting a second one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slingshot.io import atomic_write_json

STATE_FILE = "launch.json"
# One line per start of a stage's job (a Slurm requeue starts the same job again): when it
# started and where. Written by the job, so never racing the launcher's launch.json.
STARTS_FILE = "starts.jsonl"


@dataclass
class Submission:
    job_id: str
    backend: str
    submitted_at: float
    reason: str  # first | requeue (stage asked, after a checkpoint) | resubmit (job lost)
    ended_at: float | None = None  # when the launcher saw the job end (the local clock's cost)


@dataclass
class LaunchState:
    path: Path
    submissions: list[Submission] = field(default_factory=list)

    @classmethod
    def load(cls, work_dir: Path) -> LaunchState:
        path = Path(work_dir) / STATE_FILE
        if not path.is_file():
            return cls(path)
        raw = json.loads(path.read_text())
        return cls(path, [Submission(**s) for s in raw.get("submissions", [])])

    def save(self) -> None:
        atomic_write_json(self.path, {"submissions": [asdict(s) for s in self.submissions]})

    def add(self, job_id: str, backend: str, reason: str) -> Submission:
        submission = Submission(job_id=str(job_id), backend=backend, submitted_at=time.time(), reason=reason)
        self.submissions.append(submission)
        self.save()
        return submission

    def mark_ended(self, job_id: str) -> None:
        for submission in self.submissions:
            if submission.job_id == str(job_id) and submission.ended_at is None:
                submission.ended_at = time.time()
        self.save()

    @property
    def current(self) -> Submission | None:
        return self.submissions[-1] if self.submissions else None

    @property
    def job_ids(self) -> list[str]:
        return [s.job_id for s in self.submissions]

    @property
    def restarts(self) -> int:
        """Submissions after the first (local requeues and resubmissions after a lost job)."""
        return max(len(self.submissions) - 1, 0)

    def count(self, reason: str) -> int:
        return sum(1 for s in self.submissions if s.reason == reason)

    @property
    def first_submitted_at(self) -> float | None:
        return self.submissions[0].submitted_at if self.submissions else None


def record_start(work_dir: Path) -> None:
    """Append this job start (the job id, its restart count, the time) to the work dir."""
    entry = {
        # The id the launcher recorded: Slurm's, or submitit's local job id (its controller's pid).
        "job_id": os.environ.get("SLURM_JOB_ID")
        or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
        or str(os.getpid()),
        "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        "started_at": time.time(),
        "host": socket.gethostname(),
    }
    with open(Path(work_dir) / STARTS_FILE, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def read_starts(work_dir: Path) -> list[dict]:
    path = Path(work_dir) / STARTS_FILE
    if not path.is_file():
        return []
    starts = []
    for line in path.read_text().splitlines():
        try:
            starts.append(json.loads(line))
        except ValueError:
            continue  # a line cut off by a crash mid-append
    return starts
