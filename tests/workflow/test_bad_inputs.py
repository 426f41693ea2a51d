"""Bad inputs through the real command line (Snakemake on the Snakefile, and `slingshot
validate`): each fails before any compute with a non-zero exit and a message naming the
problem and where it is (key path, file and line), and leaves nothing half-written (no
results/ or work/ at all when the DAG refuses it; no manifest and no temp files when the
first job refuses it).

(Unit-level checks of the same errors are in test_config.py, tests/unit/data/test_corpora.py
and tests/unit/models/test_hf.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline import pipeline_env, run_snakemake
from real_pipeline import real_config

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, edit: dict[str, Any] | None = None, text: str | None = None) -> Path:
    path = real_config(tmp_path, "badinput")
    if text is not None:
        path.write_text(text)
    elif edit:
        raw = yaml.safe_load(path.read_text())
        for dotted, value in edit.items():
            *parents, last = dotted.split(".")
            node = raw
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def _refused_at_dag_time(tmp_path: Path, config: Path, *needles: str) -> str:
    out = run_snakemake(tmp_path, config, "--until", "pretrain", timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    for needle in needles:
        assert needle in text, text[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()
    validate = subprocess.run(
        [sys.executable, "-m", "slingshot.cli", "validate", str(config)],
        capture_output=True,
        text=True,
        env=pipeline_env(),
        timeout=120,
    )
    assert validate.returncode == 2 and needles[0] in validate.stderr, validate.stderr
    return text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_yaml_that_does_not_parse(tmp_path):
    config = _config(tmp_path, text="pipeline:\n  name: x\n stages: [\n")
    out = subprocess.run(
        [sys.executable, "-m", "slingshot.cli", "validate", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 2 and f"{config}: not valid YAML" in out.stderr and "line 3" in out.stderr
    snake = run_snakemake(tmp_path, config, "--until", "pretrain", timeout=300)
    # Snakemake parses --configfile itself, before the Snakefile runs: its message names
    # neither the file nor the line (`slingshot validate` does).
    assert snake.returncode != 0 and "Config file is not valid JSON or YAML" in snake.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


def test_unknown_key_and_wrong_type(tmp_path):
    config = _config(tmp_path, {"stages.pretrain.micro_batch_sise": 4, "launcher.poll_interval_s": "fast"})
    _refused_at_dag_time(
        tmp_path,
        config,
        f"stages.pretrain.micro_batch_sise: unknown key [{config}:{_line_of(config, 'micro_batch_sise')}]",
        "launcher.poll_interval_s: Input should be a valid number",
    )


def test_unknown_task_family(tmp_path):
    config = _config(tmp_path, {"data.families": ["basic_arithmetic", "no_such_task"]})
    line = _line_of(config, "no_such_task")
    _refused_at_dag_time(
        tmp_path,
        config,
        "data.families.1: unknown task family 'no_such_task'; valid names:",
        f"[{config}:{line}]",
    )


def test_gpu_request_on_a_machine_without_gpus(tmp_path):
    config = _config(tmp_path, {"stages.pretrain.resources.gpus_per_node": 1})
    _refused_at_dag_time(
        tmp_path, config, "stages.pretrain.resources.gpus_per_node: 1 GPUs requested but this machine has 0"
    )


def test_unreachable_tracking_server(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    config = _config(tmp_path, {"tracking.uri": uri})
    _refused_at_dag_time(
        tmp_path,
        config,
        f"tracking.uri: no MLflow tracking server answers at {uri} (Connection refused)",
        f"[{config}:{_line_of(config, uri)}]",
    )


@pytest.mark.parametrize("case", ["missing", "empty", "blank-lines"])
def test_user_corpus_missing_or_empty(tmp_path, case):
    corpus = tmp_path / "mine.jsonl"
    if case != "missing":
        corpus.write_text("" if case == "empty" else "\n  \n")
    config = _config(tmp_path, {"data.extra_corpora": [{"name": "mine", "path": str(corpus)}]})
    reason = "does not exist" if case == "missing" else "is empty (no records)"
    _refused_at_dag_time(
        tmp_path,
        config,
        f"data.extra_corpora.0.path: '{corpus}' {reason} [{config}:{_line_of(config, str(corpus))}]",
    )


def _model_dir(path: Path, files: tuple[str, ...], vocab_size: int = 64, tokenizer_tokens: int = 64) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab_size}))
    if "weights" in files:
        (path / "model.safetensors").write_bytes(b"\0" * 16)
    if "tokenizer" in files:
        vocab = {f"t{i}": i for i in range(tokenizer_tokens)}
        (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}))
    return path


@pytest.mark.parametrize(
    ("files", "tokens", "reason"),
    [
        ((), 64, "has no weights"),
        (("weights",), 64, "has no tokenizer"),
        (("weights", "tokenizer"), 300, "has 300 tokens but config.json's vocab_size is 64"),
    ],
    ids=["no-weights", "no-tokenizer", "tokenizer-mismatch"],
)
def test_model_directory_missing_files_or_with_a_foreign_tokenizer(tmp_path, files, tokens, reason):
    model = _model_dir(tmp_path / "model", files, tokenizer_tokens=tokens)
    config = _config(tmp_path, {"stages.pretrain.enabled": False, "stages.rlp.init_model": str(model)})
    _refused_at_dag_time(tmp_path, config, "stages.rlp.init_model:", reason, str(model))


@pytest.mark.slow
def test_malformed_json_line_in_a_user_corpus_fails_the_data_job_naming_file_and_line(tmp_path):
    corpus = tmp_path / "mine.jsonl"
    corpus.write_text('{"text": "one"}\n{"text": "two"}\n{"text": three}\n')
    config = _config(tmp_path, {"data.extra_corpora": [{"name": "mine", "path": str(corpus)}]})
    out = run_snakemake(tmp_path, config, "--until", "pretrain", timeout=300)
    assert out.returncode != 0
    log = (tmp_path / "results" / "logs" / "data.log").read_text()
    assert f"{corpus}:3: invalid JSON" in log and "data FAILED" in log, log[-3000:]
    results = tmp_path / "results"
    assert not (results / "data" / "manifest.json").exists()
    assert not (results / "main").exists()  # pretraining never started
    leftovers = [p for p in results.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers and not list((results / "data").glob(".*/"))  # no temp files or dirs
