"""Corpus readers: field mapping, streaming, errors naming file + line/row + field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slingshot.data.corpora import (
    CorpusFormatError,
    CorpusSpec,
    FieldMap,
    read_corpus,
    write_jsonl,
    write_parquet,
)
from slingshot.data.synthetic import generate_general_text, reasoning_records
from slingshot.data.tasks import SplitSizes, make_splits
from slingshot.data.teacher import ProceduralTeacher
from slingshot.rewards import is_correct


def test_field_map_layouts() -> None:
    assert FieldMap().text == "text"
    chat = FieldMap(prompt="q", response="a")
    assert chat.text is None and chat.required == ["q", "a"]
    with pytest.raises(ValueError):
        FieldMap(prompt="q")
    with pytest.raises(ValueError):
        FieldMap(text="t", prompt="q", response="a")


def test_jsonl_reads_with_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    stats = write_jsonl(path, [{"q": f"Q{i}", "a": f"A{i}", "uid": i} for i in range(5)])
    assert stats.records == 5 and len(stats.sha256) == 64
    spec = CorpusSpec(name="c", path=str(path), fields=FieldMap(prompt="q", response="a", id="uid"))
    recs = list(read_corpus(spec))
    assert recs[2] == {"id": "2", "prompt": "Q2", "response": "A2"}


def test_jsonl_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(CorpusFormatError, match=rf"{path}:4: invalid JSON"):
        list(read_corpus(CorpusSpec(name="b", path=str(path))))


def test_jsonl_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    it = read_corpus(CorpusSpec(name="m", path=str(path)))
    assert next(it)["text"] == "a"  # streaming: the first record arrives before the bad one is read
    with pytest.raises(CorpusFormatError) as err:
        next(it)
    assert str(path) in str(err.value) and "line 2" in str(err.value) and "'text'" in str(err.value)


def test_jsonl_wrong_type_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": 5}) + "\n")
    with pytest.raises(CorpusFormatError, match="line 1.*'text' is int"):
        list(read_corpus(CorpusSpec(name="t", path=str(path))))


def test_parquet_streams_row_groups_and_names_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    rows = [{"text": f"doc {i}", "n": i} for i in range(50)]
    rows[37]["text"] = None
    write_parquet(path, rows, row_group_size=8)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(path).num_row_groups == 7
    it = read_corpus(CorpusSpec(name="p", path=str(path)), batch_size=8)
    got = [next(it)["text"] for _ in range(37)]
    assert got[-1] == "doc 36"
    with pytest.raises(CorpusFormatError) as err:
        next(it)
    assert str(path) in str(err.value) and "row 37" in str(err.value) and "'text'" in str(err.value)


def test_parquet_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    write_parquet(path, [{"body": "x"}])
    with pytest.raises(CorpusFormatError, match="missing field 'text'"):
        list(read_corpus(CorpusSpec(name="p", path=str(path))))


def test_hf_load_from_disk(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list([{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)]).save_to_disk(
        str(tmp_path / "hf")
    )
    spec = CorpusSpec(
        name="h", path=str(tmp_path / "hf"), fields=FieldMap(prompt="prompt", response="completion")
    )
    assert [r["response"] for r in read_corpus(spec)] == ["c0", "c1", "c2", "c3"]
    bad = CorpusSpec(name="h", path=str(tmp_path / "hf"))
    with pytest.raises(CorpusFormatError, match="missing field 'text'"):
        list(read_corpus(bad))


def test_general_text_is_deterministic() -> None:
    a = list(generate_general_text(20, seed=1))
    assert a == list(generate_general_text(20, seed=1))
    assert a != list(generate_general_text(20, seed=2))
    assert list(generate_general_text(5, seed=1, start=10)) == a[10:15]
    assert all(len(d["text"].split(". ")) >= 2 for d in a)


def test_reasoning_records_are_verified_prompt_plus_trace() -> None:
    entries = make_splits(["gcd", "countdown"], SplitSizes(train=5, validation=1, test=1), 0)["train"]
    recs = list(reasoning_records(entries, ProceduralTeacher(), samples_per_entry=2))
    assert len(recs) == 20
    by_id = {e["id"]: e for e in entries}
    for r in recs:
        entry = by_id[r["id"].split("#")[0]]
        assert r["text"] == f"<|user|>\n{r['prompt']}\n<|assistant|>\n{r['response']}"
        assert is_correct(entry, r["response"])


def test_reasoning_records_as_statements_with_inline_thoughts() -> None:
    from slingshot.data.config import InlineThoughts, ThoughtTemplate

    entries = make_splits(["chain_sum"], SplitSizes(train=200, validation=1, test=1), 0)["train"]
    template = ThoughtTemplate(open="<think>", close="</think>", after=" ")
    inline = InlineThoughts(statement_fraction=0.5, thought_fraction=0.5, template=template)
    recs = list(reasoning_records(entries, ProceduralTeacher(), inline=inline, seed=3))
    assert recs == list(reasoning_records(entries, ProceduralTeacher(), inline=inline, seed=3))
    forms = [r["form"] for r in recs]
    assert 70 < forms.count("chat") < 130 and 30 < forms.count("thought") < 70  # 100 / 50 / 50 expected
    for r in recs:
        trace = ProceduralTeacher().solve(next(e for e in entries if e["id"] == r["id"].split("#")[0]))
        expected = {
            "chat": f"<|user|>\n{r['prompt']}\n<|assistant|>\n{r['response']}",
            "statement": f"{r['prompt']}\n{trace.answer}",
            "thought": f"{r['prompt']}\n<think>{trace.thought}</think> {trace.answer}",
        }[r["form"]]
        assert r["text"] == expected and r["response"] == trace.completion  # SFT's fields unchanged
    off = list(reasoning_records(entries, ProceduralTeacher(), seed=3))
    assert {r["form"] for r in off} == {"chat"}


def test_megatron_corpus_has_no_text_to_read(tmp_path: Path) -> None:
    from slingshot.data.corpora import CorpusFormatError, CorpusSpec, read_corpus

    spec = CorpusSpec(name="tok", path=str(tmp_path / "tok"), format="megatron")
    with pytest.raises(CorpusFormatError, match="corpus 'tok' .* is a tokenized Megatron dataset"):
        read_corpus(spec)


def test_text_chunks_are_the_records_in_order(tmp_path: Path) -> None:
    from slingshot.data.corpora import (
        CorpusSpec,
        chunk_texts,
        read_corpus,
        record_text,
        text_chunks,
        write_jsonl,
    )

    write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(7)])
    spec = CorpusSpec(name="c", path=str(tmp_path / "c.jsonl"))
    chunks = list(text_chunks(spec, chunk_records=3))
    assert [len(chunk_texts(c)) for c in chunks] == [3, 3, 1]
    assert [t for c in chunks for t in chunk_texts(c)] == [record_text(r) for r in read_corpus(spec)]
