"""The launcher's record of a stage's jobs, kept in the work dir (never a Snakemake output).

It is what lets a rerun of Snakemake re-attach to a job that is still pending or
running instead of submitting a second one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slingshot.io import atomic_write_json

STATE_FILE = "launch.json"


@dataclass
class Submission:
    job_id: str
    backend: str
    submitted_at: float
    reason: str  # first | requeue (stage asked, after a checkpoint) | resubmit (job lost)


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
