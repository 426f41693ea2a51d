"""slingshot.evaluation: prompts, judging, the per-family table, on hand-checked values."""

from __future__ import annotations

import json
import math

import pytest

from slingshot.config import BenchmarkConfig, PipelineConfig
from slingshot.data.tasks import content_hash, load_entries
from slingshot.data.teacher import task_prompt
from slingshot.evaluation import (
    ALL,
    SampleResult,
    answer_budget,
    benchmark_answer,
    check_benchmarks_held_out,
    check_held_out,
    encode_prompt,
    evaluate_family,
    flat_metrics,
    judge,
    load_benchmarks,
    mean,
    prompt_text,
    select_prompts,
    summarize,
    table_csv,
    training_prompt_sources,
)
from slingshot.rollout import Rollout


class CharTokenizer:
    """One token per character (id = code point), a chat template of ``U:<content>|A:``; EOS is 0."""

    eos_token_id = 0

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):  # noqa: ANN001, ANN201
        assert not tokenize and add_generation_prompt
        return "".join(f"U:{m['content']}" for m in messages) + "|A:"

    def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        assert not add_special_tokens
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return "".join(chr(i) for i in ids)


def _sample(
    entry_id: str, family: str, correct: bool, tokens: int = 10, finished: bool = True
) -> SampleResult:
    return SampleResult(entry_id, family, 0, "", tokens, finished, parsed=finished, correct=correct)


def test_truncated_output_is_never_correct(small_data):
    entry = load_entries(small_data["outputs"]["tasks_test"])[0]
    text = f"<think>\nx\n</think>\n\\boxed{{{entry['answer']}}}"
    assert judge(entry, text, finished=True) == (True, True)
    assert judge(entry, text, finished=False) == (False, False)
    assert judge(entry, "<think>\nx\n</think>\n\\boxed{zzz}", True) == (True, False)


def test_prompt_selection_is_fixed_by_seed_and_per_family(small_data):
    entries = load_entries(small_data["outputs"]["tasks_test"])
    a = select_prompts(entries, 3, seed=1)
    assert [e["id"] for e in a] == [e["id"] for e in select_prompts(list(reversed(entries)), 3, 1)]
    assert [e["id"] for e in a] != [e["id"] for e in select_prompts(entries, 3, seed=2)]
    families = sorted({e["family"] for e in entries})
    assert [e["family"] for e in a] == [f for f in families for _ in range(3)]


def test_prompts_are_the_task_prompt_as_the_rl_stages_render_it(small_data):
    from slingshot.data.chat import prompt_token_ids
    from slingshot.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(small_data["outputs"]["tokenizer_dir"])
    entry = load_entries(small_data["outputs"]["tasks_test"])[0]
    assert encode_prompt(tokenizer, entry) == prompt_token_ids(tokenizer, task_prompt(entry))
    assert prompt_text(CharTokenizer(), {"question": "2+2?"}) == "U:2+2?|A:"
    assert encode_prompt(CharTokenizer(), {"question": "ab"}) == [ord(c) for c in "U:ab|A:"]


def test_answer_budget_fits_the_longest_prompt():
    tok = CharTokenizer()
    entries = [{"family": "f", "question": "x" * 10}, {"family": "f", "question": "y"}]  # 15 and 6 tokens
    assert answer_budget(tok, entries, 64, None) == 64
    assert answer_budget(tok, entries, 64, 50) == 35
    assert answer_budget(tok, entries, 20, 50) == 20
    with pytest.raises(ValueError, match="a f prompt has 15 tokens; the model has 15 positions"):
        answer_budget(tok, entries, 64, 15)


def test_evaluate_family_strips_the_stop_token_and_judges_each_sample():
    tok = CharTokenizer()
    entry = {"id": "e1", "family": "basic_arithmetic", "question": "1+3", "answer": "4", "hash": "h"}
    right = [ord(c) for c in "<think>\nx\n</think>\n\\boxed{4}"]

    class Scripted:
        def generate(self, prompts, n, max_new_tokens, temperature, seed):  # noqa: ANN001, ANN201
            assert prompts == [encode_prompt(tok, entry)] and (n, max_new_tokens, seed) == (3, 9, 5)
            return [
                [
                    Rollout(prompts[0], right + [0], True),  # stop token dropped: not counted
                    Rollout(prompts[0], right, False),  # truncated: neither parsed nor correct
                    Rollout(prompts[0], [ord(c) for c in "no answer"] + [0], True),
                ]
            ]

    got = evaluate_family(Scripted(), tok, [entry], 3, 9, 0.7, 5, [0])
    assert [(r.sample, r.tokens, r.finished, r.parsed, r.correct) for r in got] == [
        (0, len(right), True, True, True),
        (1, len(right), False, False, False),
        (2, 9, True, False, False),
    ]
    assert got[0].completion == "<think>\nx\n</think>\n\\boxed{4}" and got[0].entry_id == "e1"


def test_summarize_rows_by_hand():
    results = [
        # family a, prompt p1: 1 of 2 correct; prompt p2: 2 of 2 correct
        _sample("p1", "a", True, tokens=4),
        _sample("p1", "a", False, tokens=8, finished=False),
        _sample("p2", "a", True, tokens=6),
        _sample("p2", "a", True, tokens=6),
        # family b, prompt p3: 0 of 2 correct
        _sample("p3", "b", False, tokens=2),
        _sample("p3", "b", False, tokens=2),
    ]
    rows = summarize(results, [1, 2])
    assert [r["family"] for r in rows] == ["a", "b", ALL]
    a, b, overall = rows
    assert a == {
        "family": "a",
        "prompts": 2,
        "samples": 4,
        "pass_at_1": 0.75,  # (1/2 + 1) / 2
        "pass_at_2": 1.0,  # each prompt has a correct sample among its 2
        "response_tokens": 6.0,
        "parse_rate": 0.75,
        "truncated_rate": 0.25,
    }
    assert (b["pass_at_1"], b["pass_at_2"], b["response_tokens"]) == (0.0, 0.0, 2.0)
    assert overall["prompts"] == 3 and overall["samples"] == 6
    assert overall["pass_at_1"] == pytest.approx(0.5)  # (1/2 + 1 + 0) / 3
    assert overall["pass_at_2"] == pytest.approx(2 / 3)
    assert overall["response_tokens"] == pytest.approx(28 / 6)
    with pytest.raises(ValueError, match="pass@4 needs at least 4 samples per prompt"):
        summarize(results, [4])

    metrics = flat_metrics(rows)
    assert metrics["pass_at_1"] == pytest.approx(0.5) and metrics["prompts"] == 3.0
    assert metrics["a/pass_at_1"] == 0.75 and metrics["b/truncated_rate"] == 0.0
    assert "samples" not in metrics and "a/prompts" not in metrics and "family" not in metrics
    assert len(metrics) == 6 + 2 * 5  # overall: prompts + 5 rates; per family: 5 rates

    assert table_csv(rows[:1]) == (
        "family,prompts,samples,pass_at_1,pass_at_2,response_tokens,parse_rate,truncated_rate\n"
        "a,2,4,0.75,1,6,0.75,0.25\n"
    )
    assert math.isnan(mean([])) and mean([1.0, 2.0]) == 1.5


def test_check_held_out_refuses_a_test_question_seen_in_training(tmp_path):
    test = [{"id": "t1", "question": "What is 2+2?", "hash": content_hash("What is 2+2?")}]
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"id": "x", "question": "other", "hash": content_hash("other")}) + "\n")
    check_held_out(test, {"tasks_train": str(train)})  # nothing shared, no reasoning corpus
    corpus = tmp_path / "reasoning.jsonl"
    corpus.write_text(json.dumps({"prompt": "  what is 2+2? "}) + "\n")
    with pytest.raises(RuntimeError, match=r"1 test instances also occur in training data .* \['t1'\]"):
        check_held_out(test, {"tasks_train": str(train), "corpus_reasoning": str(corpus)})


def _bench_entry(fmt: str, answer: str) -> dict:
    return {"id": "b/0", "family": "bench/b", "benchmark": fmt, "question": "q", "answer": answer}


@pytest.mark.parametrize(
    ("fmt", "gold", "completion", "verdict"),
    [
        ("math", "\\frac{1}{2}", "<think>\nx\n</think>\nSo \\boxed{0.5}", (True, True)),  # math-verify
        ("math", "0.5", "</think>\\boxed{\\frac{2}{4}}", (True, True)),
        ("math", "\\frac{1}{2}", "</think>\\boxed{0.6}", (True, False)),
        ("math", "3", "</think>the answer is 3", (False, False)),  # MATH needs a box
        ("gsm8k", "1250", "<think>3 steps</think>It costs $1,250 in all.", (True, True)),  # last number
        ("aime", "33", "</think>\\boxed{033}", (True, True)),
        ("aime", "33", "<think>33 is it", (False, False)),  # thought never closed: truncated
        ("multiple_choice", "B", "</think>\\boxed{(b)}", (True, True)),
        ("multiple_choice", "B", "</think>\\boxed{\\text{B. blood}}", (True, True)),
        ("multiple_choice", "B", "</think>\\boxed{C}", (True, False)),
        ("multiple_choice", "B", "</think>\\boxed{blood}", (False, False)),  # no letter
    ],
)
def test_benchmark_answers_are_graded_by_math_verify_or_letter(fmt, gold, completion, verdict):
    entry = _bench_entry(fmt, gold)
    assert judge(entry, completion, finished=True) == verdict
    assert judge(entry, completion, finished=False) == (False, False)


def test_benchmark_answer_reduces_choices_to_their_letter():
    assert benchmark_answer(_bench_entry("multiple_choice", "A"), "</think>\\boxed{ d) }") == "D"
    assert benchmark_answer(_bench_entry("gsm8k", "1"), "</think>-3 or 2.5") == "2.5"


def test_benchmark_pass_at_k_by_hand():
    # n = 4 samples: prompt x has c = 1, prompt y has c = 2, prompt z has c = 0.
    results = [_sample(p, "bench/b", i < c) for p, c in (("x", 1), ("y", 2), ("z", 0)) for i in range(4)]
    (row, _) = summarize(results, [1, 2, 4])
    # pass@2 = 1 - C(n-c, 2) / C(4, 2): x 1 - 3/6 = 1/2, y 1 - 1/6 = 5/6, z 0
    assert row["pass_at_1"] == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)
    assert row["pass_at_2"] == pytest.approx((1 / 2 + 5 / 6 + 0) / 3)
    assert row["pass_at_4"] == pytest.approx(2 / 3)
    assert flat_metrics([row])["bench/b/pass_at_2"] == pytest.approx(4 / 9)


def _benchmark(name: str, questions: list[str]) -> list[dict]:
    return [
        {"id": f"{name}/{i}", "hash": content_hash(q), "prompt_hash": content_hash(q + "\n\nBox it.")}
        for i, q in enumerate(questions)
    ]


def test_a_contaminated_benchmark_is_refused_by_name():
    benchmarks = {
        "gsm8k": _benchmark("gsm8k", ["What is 2+2?", "fresh"]),
        "aime": _benchmark("aime", ["hard"]),
    }
    check_benchmarks_held_out(benchmarks, {"tasks_train": ["other"], "sft": iter(["unrelated"])})
    sources = {
        "tasks_train": ["  WHAT is 2+2? "],  # case and spacing do not matter
        "stages.prorl.datasets.mine": ["fresh\n\nbox it."],  # the rendered prompt counts too
    }
    with pytest.raises(RuntimeError) as error:
        check_benchmarks_held_out(benchmarks, sources)
    assert str(error.value) == (
        "contaminated benchmarks refused:\n"
        "benchmark 'gsm8k': 2 prompts also occur in training data "
        "(stages.prorl.datasets.mine: 1, e.g. ['gsm8k/1']; tasks_train: 1, e.g. ['gsm8k/0'])"
    )


def test_training_prompt_sources_cover_tasks_corpus_sft_and_prorl_sets(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"question": "t1"}) + "\n")
    corpus = tmp_path / "reasoning.jsonl"
    corpus.write_text(json.dumps({"prompt": "r1", "response": "x"}) + "\n")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "s1", "output": "y"}) + "\n")
    sft_set = {"path": str(sft), "prompt_field": "instruction", "response_field": "output"}
    converted = tmp_path / "prompt_sets" / "mine.jsonl"  # as the data stage writes a ProRL prompt set
    converted.parent.mkdir()
    converted.write_text(json.dumps({"id": "mine:1", "question": "p1", "answer": "2"}) + "\n")
    prompt_set = {"name": "mine", "path": str(tmp_path / "raw.jsonl")}
    stages = {"sft": {"extra_datasets": [sft_set]}, "prorl": {"datasets": [prompt_set]}}
    cfg = PipelineConfig.model_validate({"stages": stages})
    data = {"tasks_train": str(train), "corpus_reasoning": str(corpus), "prompt_set_mine": str(converted)}
    sources = training_prompt_sources(cfg, "main", data)
    assert {k: list(v) for k, v in sources.items()} == {
        "tasks_train": ["t1"],
        "corpus_reasoning": ["r1"],
        "stages.sft.extra_datasets.0": ["s1"],
        "stages.prorl.datasets.mine": ["p1"],
    }


def test_a_benchmark_limit_is_a_seeded_draw_independent_of_file_order(tmp_path):
    rows = [json.dumps({"q": f"problem {i}", "a": i}) for i in range(20)]
    forward, backward = tmp_path / "f.jsonl", tmp_path / "b.jsonl"
    forward.write_text("\n".join(rows) + "\n")
    backward.write_text("\n".join(reversed(rows)) + "\n")

    def drawn(path, limit, seed):
        spec = BenchmarkConfig(
            name="b", format="local", path=str(path), prompt_key="q", answer_key="a", limit=limit
        )
        return sorted(e["answer"] for e in load_benchmarks([spec], seed)["b"])

    a = drawn(forward, 5, seed=1)
    assert len(a) == 5 and a == drawn(backward, 5, seed=1) and a != drawn(forward, 5, seed=2)
    assert len(drawn(forward, None, seed=1)) == 20


def test_judge_reads_the_answer_after_the_configured_thinking_tags():
    entry = {"family": "basic_arithmetic", "question": "2+3?", "answer": "5", "math": True}
    unclosed = "<reason>2 + 3 = \\boxed{5}"  # a thought under chat.think_open: <reason>, never closed
    assert judge(entry, unclosed, True) == (True, True)  # the default tags see no thought at all
    assert judge(entry, unclosed, True, ("<reason>", "</reason>")) == (False, False)
    closed = "<reason>2 + 3 = 6?</reason>\\boxed{5}"
    assert judge(entry, closed, True, ("<reason>", "</reason>")) == (True, True)
    bench = {"benchmark": "gsm8k", "answer": "5", "family": "bench/g"}
    assert judge(bench, "<reason>so 5</reason>the total is 5", True, ("<reason>", "</reason>")) == (
        True,
        True,
    )
    assert judge(bench, "<reason>so 5", True, ("<reason>", "</reason>")) == (False, False)
