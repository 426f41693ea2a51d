"""A stage entrypoint for the launcher's tests: each run of a node does what the test
scripted for it (in-process jobs share this module with the test)."""

from __future__ import annotations

from slingshot.checkpoint import StageInterrupted
from slingshot.context import StageContext, StageResult

# Node stage name -> what its successive runs do: "done" (the default) or "stop" (as after USR2).
SCRIPT: dict[str, list[str]] = {}
STOP_STEP = 3


def run(ctx: StageContext) -> StageResult:
    actions = SCRIPT.get(ctx.stage, [])
    if actions and actions.pop(0) == "stop":
        raise StageInterrupted(STOP_STEP, "SIGUSR2")
    result = ctx.output_dir / "result.txt"
    result.write_text(ctx.stage + "\n")
    return StageResult(
        outputs={"result": str(result)}, metrics={"score": 0.5}, tokens=12, extra={"note": "x"}
    )
