"""One stage-like job for the tracking-server tests: opens its MLflow run through slingshot's
Tracker (parent run per variant, child run per job, as StageJob does), waits for a start
signal so all jobs log at once, then logs ``steps`` steps of two metrics, one call per step.

    python tracker_worker.py URI EXPERIMENT WORK_DIR INDEX STEPS GO_FILE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from slingshot.tracking import Tracker, open_parent_run


def expected(index: int, step: int) -> dict[str, float]:
    return {"loss": index + 1.0 / step, "lr": step * 1e-3}


def main(uri: str, experiment: str, work_dir: str, index: str, steps: str, go_file: str) -> None:
    work = Path(work_dir)
    i = int(index)
    parent = open_parent_run(uri, experiment, work, "main", tags={"slingshot.variant": "main"})
    tracker = Tracker.open_run(
        uri, experiment, work / f"job{i:02d}" / "mlflow_run_id", run_name=f"job{i:02d}", parent_run_id=parent
    )
    tracker.set_tags({"slingshot.job_index": i})
    while not Path(go_file).exists():
        time.sleep(0.05)
    t0 = time.monotonic()
    for step in range(1, int(steps) + 1):
        tracker.log_metrics(expected(i, step), step=step)
    tracker.finish()
    print(f"job {i}: logged {steps} steps in {time.monotonic() - t0:.2f}s run={tracker.run_id}")


if __name__ == "__main__":
    main(*sys.argv[1:])
