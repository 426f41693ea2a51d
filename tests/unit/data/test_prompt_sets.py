"""User RL prompt sets: read from JSONL/Parquet, bad rows fail the data job with file:line,
verifiers resolved in the data job, one definition per name across variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stages import make_ctx, pipeline_config

from slingshot.config import PromptSet
from slingshot.data.corpora import CorpusFormatError, write_parquet
from slingshot.data.prompt_sets import convert_prompt_sets, load_prompt_set, prompt_sets, read_prompt_set
from slingshot.data.tasks import content_hash
from slingshot.rewards.verifiers import RewardFunctionError


def _jsonl(path: Path, rows: list[object]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_jsonl_rows_become_entries_with_their_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"q": "1+1?", "a": 2}, "", {"q": "half of 1?", "a": "1/2"}])
    entries = read_prompt_set(PromptSet(name="m", path=path, prompt_key="q", answer_key="a"))
    assert [(e["id"], e["question"], e["answer"], e["source"]) for e in entries] == [
        ("m:1", "1+1?", "2", f"{path}:1"),  # a numeric answer is read as its text
        ("m:3", "half of 1?", "1/2", f"{path}:3"),  # line numbers count the blank line
    ]
    assert entries[0]["verifier"] == "math" and entries[0]["family"] == "m"
    assert entries[0]["hash"] == content_hash("1+1?")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], r"m.jsonl:2 \(line 2\): missing field 'answer'"),
        ([{"prompt": "a", "answer": "1"}, "{not json"], r"m.jsonl:2: invalid JSON"),
        ([{"prompt": "  ", "answer": "1"}], r"m.jsonl:1: empty prompt \(field 'prompt'\)"),
        ([{"prompt": "a", "answer": ""}], r"m.jsonl:1: empty answer \(field 'answer'\)"),
        ([{"prompt": ["a"], "answer": "1"}], r"m.jsonl:1 \(line 1\): field 'prompt' is list"),
    ],
)
def test_a_bad_row_names_the_file_and_line(tmp_path, rows, message):
    path = _jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(CorpusFormatError, match=message):
        read_prompt_set(PromptSet(name="m", path=path))


def test_parquet_rows_and_a_bad_parquet_row(tmp_path):
    good = write_parquet(tmp_path / "g.parquet", [{"prompt": "1+2?", "answer": 3}]).path
    (entry,) = read_prompt_set(PromptSet(name="g", path=good, verifier="exact"))
    assert (entry["answer"], entry["source"], entry["verifier"]) == ("3", f"{good} (row 0)", "exact")
    bad = write_parquet(
        tmp_path / "b.parquet", [{"prompt": "x", "answer": "1"}, {"prompt": "", "answer": "2"}]
    )
    with pytest.raises(CorpusFormatError, match=r"b.parquet \(row 1\): empty prompt"):
        read_prompt_set(PromptSet(name="b", path=bad.path))


def test_verifiers_are_resolved_when_the_set_is_read(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"prompt": "gcd(4, 6)?", "answer": 2}])
    (entry,) = read_prompt_set(PromptSet(name="m", path=path, verifier="reasoning_gym:gcd"))
    assert (entry["dataset"], entry["math"]) == ("gcd", True)
    (raw,) = read_prompt_set(PromptSet(name="m", path=path, verifier="reasoning_gym:gsm_symbolic"))
    assert raw["dataset"] == "gsm_symbolic"
    with pytest.raises(ValueError, match=r"prompt set 'm': verifier 'reasoning_gym:nope': 'nope' is neither"):
        read_prompt_set(PromptSet(name="m", path=path, verifier="reasoning_gym:nope"))
    with pytest.raises(
        RewardFunctionError, match=r"prompt set 'm': reward function 'absent_mod:fn': cannot import"
    ):
        read_prompt_set(PromptSet(name="m", path=path, verifier="absent_mod:fn"))


def test_the_data_stage_fails_on_a_bad_row_before_building_anything(tmp_path):
    from slingshot.stages import data

    path = _jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}])
    cfg = pipeline_config(tmp_path, {"stages": {"prorl": {"datasets": [{"name": "m", "path": path}]}}})
    ctx = make_ctx(tmp_path, "data", cfg)
    with pytest.raises(CorpusFormatError, match=r"m.jsonl:2 \(line 2\): missing field 'answer'"):
        data.run(ctx)
    assert not (ctx.output_dir / "tasks").exists() and not (ctx.output_dir / "prompt_sets").exists()


def test_sets_of_every_variant_are_converted_and_one_name_is_one_set(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer": "1"}])
    b = _jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "answer": "2"}, {"prompt": "r", "answer": "3"}])
    variants = {
        "main": {},
        "more": {
            "stages": {
                "prorl": {"datasets": [{"name": "a", "path": a, "weight": 3}, {"name": "b", "path": b}]}
            }
        },
    }
    base = {"stages": {"prorl": {"datasets": [{"name": "a", "path": a}]}}, "variants": variants}
    cfg = pipeline_config(tmp_path, base)
    assert [s.name for s in prompt_sets(cfg)] == ["a", "b"]  # a weight is not part of a set's identity
    converted = convert_prompt_sets(cfg, tmp_path / "out")
    assert {k: v.records for k, v in converted.items()} == {"a": 1, "b": 2}
    outputs = {f"prompt_set_{k}": v.path for k, v in converted.items()}
    assert [e["question"] for e in load_prompt_set(outputs, "b")] == ["q", "r"]
    with pytest.raises(ValueError, match="prompt set 'c' was not converted by the data stage"):
        load_prompt_set(outputs, "c")
    variants["more"]["stages"]["prorl"]["datasets"][0]["path"] = b
    with pytest.raises(ValueError, match="variant 'more' defines prompt set 'a' differently"):
        prompt_sets(pipeline_config(tmp_path, base))


def test_the_data_node_digest_changes_only_when_there_are_prompt_sets(tmp_path):
    from slingshot.io import sha256_json
    from slingshot.plan import build_plan

    plain = pipeline_config(tmp_path)
    data_node = build_plan(plain).nodes["data"]
    # Without prompt sets the digest is what it was before they existed.
    expected = sha256_json({"kind": "data", "entrypoint": None, "config": plain.data.model_dump(mode="json")})
    assert data_node.digest == expected
    path = _jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "answer": "1"}])
    with_set = pipeline_config(tmp_path, {"stages": {"prorl": {"datasets": [{"name": "m", "path": path}]}}})
    assert build_plan(with_set).nodes["data"].digest != expected


def test_check_plan_names_a_missing_prompt_set_file(tmp_path):
    from slingshot.validate import check_plan

    missing = str(tmp_path / "absent.jsonl")
    cfg = pipeline_config(tmp_path, {"stages": {"prorl": {"datasets": [{"name": "m", "path": missing}]}}})
    assert f"stages.prorl.datasets.0.path: '{missing}' does not exist" in check_plan(cfg)
