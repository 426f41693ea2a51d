"""The report's table: rows in recipe order from evaluation manifests, and its csv/markdown text."""

from __future__ import annotations

import math

from stages import pipeline_config

from slingshot.plan import build_plan
from slingshot.report_table import (
    BASE_COLUMNS,
    BENCH_BASE_COLUMNS,
    TAIL_COLUMNS,
    benchmark_rows,
    format_cell,
    k_columns,
    table_csv,
    table_md,
    table_rows,
)


def test_k_columns_cover_every_variants_k(tmp_path):
    cfg = pipeline_config(
        tmp_path,
        {
            "stages": {"evaluate": {"n_samples": 8, "k": [4, 2]}},
            "variants": {"main": {}, "wide": {"stages": {"evaluate": {"k": [8]}}}},
        },
    )
    assert k_columns(cfg) == ["pass_at_1", "pass_at_2", "pass_at_4", "pass_at_8"]


def test_rows_in_recipe_order_with_missing_metrics_as_nan(tmp_path):
    cfg = pipeline_config(tmp_path, {"stages": {"evaluate": {"n_samples": 4, "k": [1, 4]}}})
    plan = build_plan(cfg)
    manifests = {  # given out of order; rlp's and prorl's evaluations are missing
        "main/evaluate-sft": {"metrics": {"prompts": 20.0, "pass_at_1": 0.5, "parse_rate": 0.9}},
        "main/evaluate-pretrain": {
            "metrics": {"pass_at_1": 0.25, "pass_at_4": 0.5, "response_tokens": 12.0, "parse_rate": 0.8}
        },
    }
    rows = table_rows(cfg, plan, manifests)
    assert [(r["variant"], r["stage"], r["model"]) for r in rows] == [
        ("main", "pretrain", "main/pretrain-phase2"),
        ("main", "sft", "main/sft"),
    ]
    pretrain, sft = rows
    assert pretrain["prompts"] == "" and sft["prompts"] == 20
    assert (pretrain["pass_at_1"], pretrain["pass_at_4"], pretrain["response_tokens"]) == (0.25, 0.5, 12.0)
    assert math.isnan(sft["pass_at_4"]) and math.isnan(sft["response_tokens"])

    columns = [*BASE_COLUMNS, *k_columns(cfg), *TAIL_COLUMNS]
    assert table_csv(rows, columns) == (
        "variant,stage,model,prompts,pass_at_1,pass_at_4,response_tokens,parse_rate\n"
        "main,pretrain,main/pretrain-phase2,,0.2500,0.5000,12.0000,0.8000\n"
        "main,sft,main/sft,20,0.5000,,,0.9000\n"
    )
    assert table_md(rows, columns).splitlines() == [
        "| variant | stage | model | prompts | pass_at_1 | pass_at_4 | response_tokens | parse_rate |",
        "|---|---|---|---|---|---|---|---|",
        "| main | pretrain | main/pretrain-phase2 | – | 0.2500 | 0.5000 | 12.0000 | 0.8000 |",
        "| main | sft | main/sft | 20 | 0.5000 | – | – | 0.9000 |",
    ]


def test_format_cell():
    assert format_cell(1 / 3) == "0.3333" and format_cell(math.nan) == "" and format_cell(7) == "7"


def test_benchmark_rows_per_stage_and_benchmark_in_config_order(tmp_path):
    benchmarks = [{"name": n, "format": "aime", "path": str(tmp_path / n)} for n in ("math500", "aime24")]
    cfg = pipeline_config(
        tmp_path, {"stages": {"evaluate": {"n_samples": 4, "k": [1, 4], "benchmarks": benchmarks}}}
    )
    plan = build_plan(cfg)
    manifests = {
        "main/evaluate-sft": {
            "metrics": {
                "pass_at_1": 0.5,
                "bench/aime24/prompts": 30.0,
                "bench/aime24/pass_at_1": 0.1,
                "bench/aime24/pass_at_4": 0.3,
                "bench/math500/prompts": 500.0,
                "bench/math500/pass_at_1": 0.4,
            }
        },
        "main/evaluate-pretrain": {"metrics": {"pass_at_1": 0.25}},  # evaluated before benchmarks existed
    }
    rows = benchmark_rows(cfg, plan, manifests)
    assert [(r["stage"], r["benchmark"], r["prompts"]) for r in rows] == [
        ("sft", "math500", 500),
        ("sft", "aime24", 30),
    ]
    columns = [*BENCH_BASE_COLUMNS, *k_columns(cfg), *TAIL_COLUMNS]
    assert table_csv(rows, columns) == (
        "variant,stage,benchmark,prompts,pass_at_1,pass_at_4,response_tokens,parse_rate\n"
        "main,sft,math500,500,0.4000,,,\n"
        "main,sft,aime24,30,0.1000,0.3000,,\n"
    )
    assert len(table_rows(cfg, plan, manifests)) == 2  # the stage table is unchanged by benchmarks
