"""The shipped real recipe (Qwen3-1.7B-Base, GSM8K/MATH-500/AIME) validates and dry-runs here,
on tiny stand-ins for every input it names: a random-weight Qwen3 built from its transformers
config and benchmark files in each layout the recipe reads (Parquet, JSONL, HF on disk)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from real_recipe import BENCHMARK_ANSWERS, RECIPE, REPO, login_node_host, write_recipe_inputs

from slingshot.evaluation import load_benchmarks
from slingshot.validate import load_pipeline_config

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def recipe_env(tmp_path_factory):
    return write_recipe_inputs(tmp_path_factory.mktemp("recipe-inputs"))


@pytest.fixture
def tracking_server(recipe_env):
    """A stand-in tracking server where the recipe's tracking.uri points, on a free port: `slingshot
    validate` checks that it answers an authenticated request (200 here)."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"experiments": []}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"SLINGSHOT_TRACKING_URI": f"http://{login_node_host()}:{server.server_address[1]}"}
    server.shutdown()


def test_recipe_validates_with_its_benchmarks_read(recipe_env, tracking_server, tmp_path):
    env = {**os.environ, **recipe_env, **tracking_server}
    out = subprocess.run(
        [str(BIN / "slingshot"), "validate", str(RECIPE)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "main/evaluate-prorl" in out.stdout

    for key, value in recipe_env.items():
        os.environ[key] = value  # the config expands ${SLINGSHOT_*} as it validates
    try:
        cfg = load_pipeline_config(RECIPE)
    finally:
        for key in recipe_env:
            del os.environ[key]
    evaluate = cfg.variant_stages("main").evaluate
    assert evaluate.benchmarks[0].path == f"{recipe_env['SLINGSHOT_DATA']}/gsm8k/test.parquet"
    read = load_benchmarks(evaluate.benchmarks, cfg.pipeline.seed)
    assert {name: [e["answer"] for e in entries] for name, entries in read.items()} == BENCHMARK_ANSWERS
    assert all(e["question"].endswith("within \\boxed{}.") for entries in read.values() for e in entries)


def test_recipe_dry_runs(recipe_env, tmp_path):
    out = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
        + ["-n", "--cores", "1", "--configfile", str(RECIPE)],
        env={**os.environ, **recipe_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    table = out.stdout.split("Job stats:")[1].split("\n\n")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert counts["prorl"] == 2  # the length schedule: 8k then 16k, successive jobs
    assert counts["evaluate"] == 3  # rlp, sft, prorl


def test_a_missing_benchmark_file_is_named_by_key_and_line(recipe_env, tmp_path, monkeypatch):
    for key, value in {**recipe_env, "SLINGSHOT_DATA": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(
        ValueError,
        match=r"stages\.evaluate\.benchmarks\.0\.path: '.*gsm8k/test\.parquet' does not "
        r"exist \[.*qwen3-1\.7b-rlp-sft-prorl\.yaml:\d+\]",
    ):
        load_pipeline_config(RECIPE)
