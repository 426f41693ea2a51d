"""The config-digest rerun (toy stages run in-process; real Snakemake and launcher): a
changed stage config reruns that stage and everything downstream of it, from scratch (its
stale work dir is moved aside, not resumed from), and leaves the stages upstream alone."""

import json

import pytest
from pipeline import events, launch_state, run_snakemake, write_config

pytestmark = pytest.mark.slow

UPSTREAM = ("data", "main/pretrain-p1")
CHANGED = "main/rlp"
DOWNSTREAM = ("main/evaluate-rlp",)  # the report is left out: a stage less to run
TARGET = "results/main/evaluate-rlp/manifest.json"


def _manifests(directory):
    return {
        key: (directory / "results" / key / "manifest.json").read_text()
        for key in (*UPSTREAM, CHANGED, *DOWNSTREAM)
    }


def test_a_changed_stage_config_reruns_it_and_downstream_from_scratch_not_upstream(tmp_path):
    # In-process stage jobs: the digest check and the move aside are the launcher's, whatever the backend.
    config = write_config(tmp_path, {"pipeline": {"name": "rerun"}, "launcher": {"backend": "inprocess"}})
    out = run_snakemake(tmp_path, config, TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    before = _manifests(tmp_path)
    old_rlp_run = json.loads(before[CHANGED])["mlflow_run_id"]

    write_config(
        tmp_path,
        {
            "pipeline": {"name": "rerun"},
            "launcher": {"backend": "inprocess"},
            "stages": {"rlp": {"group_size": 8}},
        },
    )
    out = run_snakemake(tmp_path, config, TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    after = _manifests(tmp_path)

    for key in UPSTREAM:  # not rerun: manifest untouched, one submission
        assert after[key] == before[key], key
        assert len(launch_state(tmp_path, key)["submissions"]) == 1, key
    for key in (CHANGED, *DOWNSTREAM):
        assert after[key] != before[key], key
        assert json.loads(after[key])["digest"] != json.loads(before[key])["digest"], key
    # The stale work dir moved aside with its checkpoints; the new run started at step 1.
    stale = sorted((tmp_path / "work" / "main").glob("rlp.stale-*"))
    assert len(stale) == 1 and sorted(p.name for p in (stale[0] / "checkpoints").iterdir())
    assert [e["step"] for e in events(tmp_path, CHANGED)] == list(range(1, 7))
    log = (tmp_path / "results" / "logs" / "main.rlp.log").read_text()
    assert f"config of {CHANGED} changed since its checkpoints were written: moving them to" in log
    assert "resumed from" not in log
    assert json.loads(after[CHANGED])["mlflow_run_id"] != old_rlp_run  # a new run, not a resume
