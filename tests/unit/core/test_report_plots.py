"""The report's learning curves: which runs, which metric, in step order; and both figures render."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

from stages import pipeline_config

from slingshot.plan import build_plan
from slingshot.report_plots import fetch_curves, plot_curves, plot_pass_at_1, training_runs


class FakeClient:
    """Runs by id: their metric names and histories ((step, timestamp, value) triples)."""

    def __init__(self, runs: dict[str, dict[str, list[tuple[int, int, float]]]]) -> None:
        self.runs = runs

    def get_run(self, run_id: str) -> SimpleNamespace:
        if run_id not in self.runs:
            raise LookupError(f"run {run_id} deleted")
        return SimpleNamespace(data=SimpleNamespace(metrics={name: 0.0 for name in self.runs[run_id]}))

    def get_metric_history(self, run_id: str, name: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(step=s, timestamp=t, value=v) for s, t, v in self.runs[run_id][name]]


def test_training_runs_lists_finished_training_nodes_in_order(tmp_path):
    cfg = pipeline_config(tmp_path)
    plan = build_plan(cfg)
    for node in plan.ordered():
        if node.kind in ("pretrain", "sft", "evaluate"):  # rlp and prorl have not finished
            path = node.manifest_path(cfg)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"mlflow_run_id": f"run-{node.stage}"}))
    assert training_runs(cfg, plan) == {
        "main": [
            ("pretrain", "pretrain-phase1", "run-pretrain-phase1"),
            ("pretrain", "pretrain-phase2", "run-pretrain-phase2"),
            ("sft", "sft", "run-sft"),
        ]
    }


def test_fetch_curves_picks_each_kinds_key_metric_in_step_order():
    client = FakeClient(
        {
            # SFT's metric names: training step metrics unprefixed, held-out ones val/<name>.
            "sft": {"loss": [(2, 5, 0.5), (1, 9, 0.9), (2, 1, 0.7)], "val/loss": [(2, 0, 1.0)], "lr": []},
            "rlp": {"reward_mean": [(0, 0, 0.1), (1, 0, 0.2)], "loss": [(0, 0, 3.0)]},
            "odd": {"zeta": [(0, 0, 1.0)], "alpha": [(0, 0, 2.0)]},  # no known name: the first one
        }
    )
    runs = {
        "a": [("sft", "sft", "sft"), ("rlp", "rlp", "rlp"), ("sft", "gone", "deleted")],
        "b": [("prorl", "prorl-x", "odd")],
    }
    assert fetch_curves(client, runs) == {
        "sft": {"a": [("sft", "loss", [1, 2, 2], [0.9, 0.7, 0.5])]},  # by (step, timestamp)
        "rlp": {"a": [("rlp", "reward_mean", [0, 1], [0.1, 0.2])]},
        "prorl": {"b": [("prorl-x", "alpha", [0], [2.0])]},
    }


def test_figures_are_written(tmp_path):
    rows = [
        {"variant": "a", "stage": "pretrain", "pass_at_1": 0.1},
        {"variant": "a", "stage": "sft", "pass_at_1": math.nan},
        {"variant": "b", "stage": "sft", "pass_at_1": 0.4},
    ]
    plot_pass_at_1(rows, tmp_path / "pass.png")
    curves = {"pretrain": {"a": [("p1", "loss", [1, 2], [3.0, 2.0]), ("p2", "loss", [1, 2], [1.5, 1.0])]}}
    plot_curves(curves, tmp_path / "curves.png")
    plot_curves({}, tmp_path / "empty.png")
    for name in ("pass.png", "curves.png", "empty.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
