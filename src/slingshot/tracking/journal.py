"""The tracking journal: what a stage logs is appended to a local file first, then sent to MLflow.

``<work_dir>/mlflow_journal.jsonl`` holds one JSON record per MLflow call, in the order the
stage made them (a batch of metrics, params or tags, an artifact upload, the run's end), with
everything the call needs, metric timestamps included; ``mlflow_journal.sent`` holds how
many records MLflow has acknowledged. Records are sent in order, each once it is journaled;
while the server cannot be reached they stay pending and the stage goes on training, and the
next log call after it is back (or the launcher, once the job has ended) sends them.

Exactly once: MLflow stores a metric by (key, value, timestamp, step), so a record resent
because its acknowledgement was lost (the cursor is written after the call) is not doubled;
params are stored once per key and tags are overwritten.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOURNAL_FILE = "mlflow_journal.jsonl"
# While the server is down, the next try is this long after the last one (a refused
# connection costs nothing, but a silent host costs the connect timeout).
RETRY_EVERY_S = 5.0


class ServerUnreachable(RuntimeError):
    """MLflow could not be reached (no answer, connection refused, retries exhausted)."""


def is_unreachable(error: BaseException) -> bool:
    """An MLflow client error that means "no answer from the server", not "the server said no".

    The REST client wraps connection failures, timeouts and exhausted retries in a plain
    MlflowException ("API request to URL failed with exception ..."); an answer with an error
    (a bad param, a wrong password) is a RestException or names its 4xx status code."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, RestException) or not isinstance(error, MlflowException):
        return False
    return "failed with error code 4" not in str(error)


class Journal:
    """One stage's journal file and its cursor (only rank 0 of one job writes it at a time)."""

    def __init__(self, path: Path):
        self.path = path
        self.cursor_path = path.with_suffix(".sent")
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            # A line cut off by a crash mid-append is dropped (it was never sent either).
            for line in path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    break
        self.sent = min(self._read_cursor(), len(self.records))
        self.down_since: float | None = None
        self._retry_at = 0.0

    def _read_cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_cursor(self) -> None:
        # No fsync: a cursor lost in a crash only makes records be sent again, which is harmless.
        tmp = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        tmp.write_text(f"{self.sent}\n")
        os.replace(tmp, self.cursor_path)

    @property
    def pending(self) -> int:
        return len(self.records) - self.sent

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.records.append(record)

    def metric_floor(self) -> dict[str, int]:
        """The highest step journaled for each metric (sent or not)."""
        floor: dict[str, int] = {}
        for record in self.records:
            for key, _value, _timestamp, step in record.get("metrics", []):
                floor[key] = max(step, floor.get(key, -1))
        return floor

    def flush(self, send: Callable[[dict[str, Any]], None], probe: Callable[[], str | None]) -> int:
        """Send the pending records in order; return how many went. An unreachable server
        stops the flush (the rest stay pending); a record the server refuses is raised."""
        if not self.pending:
            return 0
        now = time.monotonic()
        if self.down_since is not None:
            if now < self._retry_at:
                return 0
            self._retry_at = now + RETRY_EVERY_S
            problem = probe()
            if problem is not None:
                return 0
        count = 0
        while self.pending:
            try:
                send(self.records[self.sent])
            except Exception as error:
                if is_unreachable(error):
                    self._went_down(error)
                    return count
                # The server refused it: raise (as an unjournaled call would), but past it,
                # or every later flush, a rerun's too, would stop on the same record.
                self.sent += 1
                self._write_cursor()
                raise
            self.sent += 1
            count += 1
            self._write_cursor()
        if self.down_since is not None:
            outage = time.monotonic() - self.down_since
            print(
                f"[slingshot] tracking server back after {outage:.0f}s: sent {count} journaled records",
                flush=True,
            )
            self.down_since = None
        return count

    def _went_down(self, error: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            first = str(error).strip().splitlines()[:1] or [type(error).__name__]
            print(
                f"[slingshot] tracking server unreachable ({first[0][:200]}); training continues, "
                f"what is logged waits in {self.path} and is sent when the server is back",
                flush=True,
            )
        self._retry_at = time.monotonic() + RETRY_EVERY_S
