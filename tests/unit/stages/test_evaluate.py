"""Evaluation stage: exact metrics through a scripted rollout backend, the real HF backend
end to end, and held-out prompts that never occur in any training data. The helpers in
slingshot.evaluation have their own tests (tests/unit/core/test_evaluation.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
from math import comb
from pathlib import Path

import pytest
from stages import make_ctx, pipeline_config, tiny_model_dir

from slingshot.data.tasks import content_hash, load_entries
from slingshot.data.tokenizer import load_tokenizer
from slingshot.evaluation import encode_prompt
from slingshot.rollout import Rollout
from slingshot.stages import evaluate

N = 4
EVAL = {"n_samples": N, "k": [1, 2, 4], "prompts_per_task": 5, "max_new_tokens": 64}


@pytest.fixture(scope="module")
def model_dir(small_data, tmp_path_factory):
    return tiny_model_dir(
        tmp_path_factory.mktemp("model") / "model", Path(small_data["outputs"]["tokenizer_dir"])
    )


def _ctx(tmp_path, small_data, model_dir, **overrides):
    cfg = pipeline_config(tmp_path, {"stages": {"evaluate": {**EVAL, **overrides}}})
    upstream = {
        "data": small_data,
        "main/sft": {"kind": "sft", "key": "main/sft", "outputs": {"model_dir": str(model_dir)}},
    }
    return make_ctx(tmp_path, "evaluate", cfg, upstream, stage="evaluate-sft", model_from="main/sft")


class ScriptedRollout:
    """Answers prompt j (in order of first sight) with ``j % (N + 1)`` correct samples, then one
    wrong but well-formed answer, one with no answer, and truncated ones (boxed right answer,
    but cut off): every verdict the stage can reach, with known counts."""

    def __init__(self, tokenizer, entries_by_prompt):
        self.tokenizer = tokenizer
        self.entries_by_prompt = entries_by_prompt
        self.expected: dict[str, dict] = {}
        self.calls = 0

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts, n, max_new_tokens, temperature, top_p=1.0, seed=None):
        self.calls += 1
        eos = self.tokenizer.eos_token_id
        out = []
        for p in prompts:
            entry = self.entries_by_prompt[tuple(p)]
            j = len(self.expected)
            c = j % (n + 1)
            right = f"<think>\nwork\n</think>\n\\boxed{{{entry['answer']}}}"
            group, parsed, tokens = [], 0, []
            for i in range(n):
                if i < c:
                    ids, finished = self._ids(right) + [eos], True
                    parsed += 1
                elif i == c:
                    ids, finished = self._ids("<think>\nhm\n</think>\n\\boxed{zzz}") + [eos], True
                    parsed += 1
                elif i == c + 1:
                    ids, finished = self._ids("<think>\nhm\n</think>\nno idea") + [eos], True
                else:
                    ids, finished = self._ids(right), False  # no stop token: cut off
                tokens.append(len(ids) - (1 if finished else 0))
                group.append(Rollout(prompt_ids=list(p), completion_ids=ids, finished=finished))
            self.expected[entry["id"]] = {"c": c, "parsed": parsed, "tokens": tokens}
            out.append(group)
        return out


def test_metrics_are_exact_for_known_completions(tmp_path, small_data, model_dir):
    ctx = _ctx(tmp_path, small_data, model_dir)
    tokenizer = load_tokenizer(small_data["outputs"]["tokenizer_dir"])
    entries = load_entries(small_data["outputs"]["tasks_test"])
    by_prompt = {tuple(encode_prompt(tokenizer, e)): e for e in entries}
    scripted = ScriptedRollout(tokenizer, by_prompt)
    result = evaluate.run(ctx, rollout_factory=lambda m, t, s: scripted)

    families = sorted({e["family"] for e in entries})
    assert scripted.calls == len(families)  # 5 prompts a family: one batch (prompts_per_batch 8) each
    exp = scripted.expected
    assert len(exp) == 5 * len(families)
    cs = [v["c"] for v in exp.values()]
    assert set(cs) == {0, 1, 2, 3, 4}  # includes c = 0 and c = n
    m = result.metrics

    def hand_pass(c: int, k: int) -> float:  # the definition, with exact binomials
        return 1 - comb(N - c, k) / comb(N, k)

    assert m["pass_at_1"] == pytest.approx(sum(c / N for c in cs) / len(cs), abs=1e-12)
    assert m["pass_at_2"] == pytest.approx(sum(hand_pass(c, 2) for c in cs) / len(cs), abs=1e-12)
    assert m["pass_at_4"] == pytest.approx(sum(c > 0 for c in cs) / len(cs), abs=1e-12)
    assert m["parse_rate"] == pytest.approx(sum(v["parsed"] for v in exp.values()) / (N * len(cs)))
    all_tokens = [t for v in exp.values() for t in v["tokens"]]
    assert m["response_tokens"] == pytest.approx(sum(all_tokens) / len(all_tokens))
    truncated = sum(max(0, N - c - 2) for c in cs)
    assert m["truncated_rate"] == pytest.approx(truncated / (N * len(cs)))
    assert m["prompts"] == len(cs)
    # Per family, from the same script.
    ids_of = {e["id"]: e["family"] for e in entries}
    for family in families:
        fam_cs = [v["c"] for k, v in exp.items() if ids_of[k] == family]
        assert m[f"{family}/pass_at_1"] == pytest.approx(sum(c / N for c in fam_cs) / len(fam_cs))
        assert m[f"{family}/pass_at_4"] == pytest.approx(sum(c > 0 for c in fam_cs) / len(fam_cs))

    # The table file holds the same numbers: a row per family plus "all".
    with open(result.outputs["table_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["family"] for r in rows] == [*families, "all"]
    assert float(rows[-1]["pass_at_2"]) == pytest.approx(m["pass_at_2"], rel=1e-5)
    samples = [json.loads(line) for line in Path(result.outputs["samples"]).read_text().splitlines()]
    assert len(samples) == N * len(cs)
    assert sum(s["correct"] for s in samples) == sum(cs)


def test_real_backend_on_held_out_prompts_only(tmp_path, small_data, model_dir):
    ctx = _ctx(tmp_path, small_data, model_dir, n_samples=2, k=[1, 2], prompts_per_task=2, max_new_tokens=8)
    result = evaluate.run(ctx)
    m = result.metrics
    assert 0.0 <= m["pass_at_1"] <= m["pass_at_2"] <= 1.0
    assert 0 < m["response_tokens"] <= 8
    assert result.tokens > 0
    # The evaluated prompts: the held-out test split, and nothing any training data holds,
    # neither the train split nor the prompts of the reasoning corpus pretraining/SFT read.
    evaluated = [json.loads(line) for line in Path(result.outputs["prompts"]).read_text().splitlines()]
    assert len(evaluated) == 2 * len({e["family"] for e in evaluated})
    hashes = {content_hash(e["question"]) for e in evaluated}
    test_hashes = {e["hash"] for e in load_entries(small_data["outputs"]["tasks_test"])}
    assert hashes <= test_hashes
    train = {content_hash(e["question"]) for e in load_entries(small_data["outputs"]["tasks_train"])}
    corpus = small_data["outputs"]["corpus_reasoning"]
    reasoning = {content_hash(json.loads(line)["prompt"]) for line in Path(corpus).read_text().splitlines()}
    assert train and reasoning
    assert hashes.isdisjoint(train) and hashes.isdisjoint(reasoning)


@pytest.mark.parametrize("where", ["tasks_train", "corpus_reasoning"])
def test_a_test_instance_in_training_data_is_refused(tmp_path, small_data, model_dir, where):
    leaky = dict(small_data, outputs=dict(small_data["outputs"]))
    test_entry = json.loads(Path(small_data["outputs"]["tasks_test"]).read_text().splitlines()[0])
    # Case and spacing differ: "the same problem" is judged on the normalised question.
    question = "  " + test_entry["question"].upper() + " "
    leaked = {"tasks_train": {**test_entry, "question": question}, "corpus_reasoning": {"prompt": question}}
    path = tmp_path / f"{where}.jsonl"
    path.write_text(Path(small_data["outputs"][where]).read_text() + json.dumps(leaked[where]) + "\n")
    leaky["outputs"][where] = str(path)
    cfg = pipeline_config(tmp_path, {"stages": {"evaluate": EVAL}})
    upstream = {"data": leaky, "main/sft": {"kind": "sft", "outputs": {"model_dir": str(model_dir)}}}
    ctx = make_ctx(tmp_path, "evaluate", cfg, upstream, stage="evaluate-sft", model_from="main/sft")
    with pytest.raises(RuntimeError, match="also occur in training data"):
        evaluate.run(ctx, rollout_factory=lambda m, t, s: None)


def _benchmarks(tmp_path) -> list[dict]:
    gsm8k = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "Ann has 3 pens and buys 4. How many?", "answer": "3+4=7\n#### 7"}]
    rows.append({"question": "Bob has 5 cups and buys 3. How many?", "answer": "5+3=8\n#### 8"})
    gsm8k.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "Which is 7?", "choices": ["six", "seven"], "answer": 1}) + "\n")
    return [
        {"name": "gsm8k", "format": "gsm8k", "path": str(gsm8k)},
        {"name": "mc", "format": "multiple_choice", "path": str(mc), "instruction": "Box the letter."},
    ]


class BoxedSeven:
    """Every sample answers ``\\boxed{7}``: right for the first GSM8K row only, and no letter."""

    def __init__(self, tokenizer):
        self.ids = list(tokenizer("<think>\nx\n</think>\n\\boxed{7}", add_special_tokens=False)["input_ids"])
        self.eos = tokenizer.eos_token_id

    def generate(self, prompts, n, max_new_tokens, temperature, top_p=1.0, seed=None):
        return [[Rollout(list(p), self.ids + [self.eos], True) for _ in range(n)] for p in prompts]


def test_benchmarks_get_rows_and_metrics_of_their_own(tmp_path, small_data, model_dir):
    ctx = _ctx(tmp_path, small_data, model_dir, prompts_per_task=1, benchmarks=_benchmarks(tmp_path))
    result = evaluate.run(ctx, rollout_factory=lambda m, t, s: BoxedSeven(t))
    m = result.metrics
    assert (m["bench/gsm8k/pass_at_1"], m["bench/gsm8k/pass_at_4"], m["bench/gsm8k/prompts"]) == (
        0.5,
        0.5,
        2.0,
    )
    assert (m["bench/mc/pass_at_1"], m["bench/mc/parse_rate"], m["bench/mc/prompts"]) == (0.0, 0.0, 1.0)
    families = sorted({e["family"] for e in load_entries(small_data["outputs"]["tasks_test"])})
    assert m["prompts"] == len(families)  # "all" is over the task families only
    with open(result.outputs["table_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["family"] for r in rows] == [*families, "all", "bench/gsm8k", "bench/mc"]
    assert result.extra["evaluation"]["benchmarks"] == {"gsm8k": 2, "mc": 1}
    samples = [json.loads(line) for line in Path(result.outputs["samples"]).read_text().splitlines()]
    mc = [s for s in samples if s["family"] == "bench/mc"]
    assert len(mc) == N and not any(s["parsed"] for s in mc)


def test_a_benchmark_rerun_reproduces_its_samples(tmp_path, small_data, model_dir):
    benchmarks = _benchmarks(tmp_path)
    runs = []
    for attempt in ("a", "b"):  # fresh work dirs: nothing cached, both generate
        ctx = _ctx(
            tmp_path / attempt,
            small_data,
            model_dir,
            n_samples=2,
            k=[1, 2],
            prompts_per_task=1,
            max_new_tokens=6,
            temperature=1.0,
            benchmarks=benchmarks,
        )
        result = evaluate.run(ctx)
        samples = Path(result.outputs["samples"]).read_text().splitlines()
        runs.append([json.loads(line) for line in samples if '"bench/' in line])
    assert len(runs[0]) == 2 * 3 and runs[0] == runs[1]
    assert len({s["completion"] for s in runs[0]}) > 1  # sampled, not one fixed string


def test_a_benchmark_prompt_seen_in_training_is_refused_by_name(tmp_path, small_data, model_dir):
    train_question = load_entries(small_data["outputs"]["tasks_train"])[0]["question"]
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({"q": train_question.upper(), "a": "1"}) + "\n")
    bench = {"name": "leaky", "format": "local", "path": str(leaky), "prompt_key": "q", "answer_key": "a"}
    ctx = _ctx(tmp_path, small_data, model_dir, benchmarks=[*_benchmarks(tmp_path), bench])
    with pytest.raises(
        RuntimeError, match=r"benchmark 'leaky': 1 prompts also occur .*corpus_reasoning: 1.*tasks_train: 1"
    ):
        evaluate.run(ctx, rollout_factory=lambda m, t, s: None)


@pytest.mark.vllm
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make install-vllm)"
)
def test_greedy_evaluation_with_vllm_equals_hf(tmp_path, small_data):
    """rollout.backend: vllm samples what HF generate does: greedy, the metrics and tokens are equal."""
    model = tiny_model_dir(tmp_path / "m", Path(small_data["outputs"]["tokenizer_dir"]), heads=2, kv_heads=1)
    small = dict(n_samples=2, k=[1, 2], prompts_per_task=2, max_new_tokens=12, temperature=0.0)
    by_backend = {
        backend: evaluate.run(
            _ctx(tmp_path / backend, small_data, model, rollout={"backend": backend}, **small)
        )
        for backend in ("hf", "vllm")
    }
    hf, vllm = by_backend["hf"], by_backend["vllm"]
    assert vllm.tokens == hf.tokens > 0
    untimed = {k: v for k, v in hf.metrics.items() if k != "eval_seconds"}
    assert {k: v for k, v in vllm.metrics.items() if k != "eval_seconds"} == untimed
    assert len(untimed) > 20 and untimed["response_tokens"] > 0


def test_batches_of_few_families_reach_every_rank():
    from slingshot.dist import shard_indices
    from slingshot.evaluation import eval_batches

    groups = {"b": [{"id": f"b{i}"} for i in range(3)], "a": [{"id": f"a{i}"} for i in range(2)]}
    batches = eval_batches(groups, 2)
    assert [(b.family, b.index, [e["id"] for e in b.entries]) for b in batches] == [
        ("a", 0, ["a0", "a1"]),
        ("b", 0, ["b0", "b1"]),
        ("b", 1, ["b2"]),
    ]
    one_per_batch = eval_batches(groups, 1)  # 2 families, 4 ranks: every rank gets prompts
    shares = [[one_per_batch[i].entries[0]["id"] for i in shard_indices(5, r, 4)] for r in range(4)]
    assert shares == [["a0", "a1"], ["b0"], ["b1"], ["b2"]]


def test_two_ranks_share_one_familys_prompts_and_match_one_rank(tmp_path, small_data, model_dir):
    """One family, two ranks: both answer prompts, and the table and every sample equal one rank's."""
    from rank_worker import run_ranks, run_stage

    entries = load_entries(small_data["outputs"]["tasks_test"])
    family = entries[0]["family"]
    one_family = tmp_path / "tasks_test.jsonl"
    one_family.write_text("".join(json.dumps(e) + "\n" for e in entries if e["family"] == family))
    data = dict(small_data, outputs=dict(small_data["outputs"], tasks_test=str(one_family)))
    spec = {
        "kind": "evaluate",
        "overrides": {
            **EVAL,
            "n_samples": 2,
            "k": [1, 2],
            "prompts_per_task": 4,
            "prompts_per_batch": 1,
            "max_new_tokens": 8,
            "temperature": 1.0,
        },
        "upstream": {"data": data, "main/sft": {"kind": "sft", "outputs": {"model_dir": str(model_dir)}}},
        "stage": "evaluate-sft",
        "model_from": "main/sft",
    }
    one = run_stage({**spec, "root": str(tmp_path / "one")})
    two = run_ranks({**spec, "root": str(tmp_path / "two")})
    assert one["extra"]["evaluation"]["prompts_by_rank"] == [4]
    assert two["extra"]["evaluation"]["prompts_by_rank"] == [2, 2]
    untimed = {k: v for k, v in one["metrics"].items() if k != "eval_seconds"}
    assert {k: v for k, v in two["metrics"].items() if k != "eval_seconds"} == untimed
    assert untimed["prompts"] == 4 and two["tokens"] == one["tokens"] > 0
    samples = [Path(r["outputs"]["samples"]).read_text() for r in (one, two)]
    assert samples[0] == samples[1] and len(samples[0].splitlines()) == 8
    assert len({json.loads(line)["completion"] for line in samples[0].splitlines()}) > 1  # sampled
    assert Path(two["outputs"]["table_csv"]).read_text() == Path(one["outputs"]["table_csv"]).read_text()


def test_the_contamination_check_reads_the_set_the_variants_sft_trained_on(tmp_path):
    """Own synthesis, another arm's (sft.synth_from), and that arm's control set (synth_dataset)."""
    variants = {
        "a": {},
        "b": {"stages": {"sft": {"synth_from": "a"}}},
        "c": {"stages": {"sft": {"synth_from": "a", "synth_dataset": "random_subset"}}},
    }
    cfg = pipeline_config(tmp_path, {"variants": variants})
    assert evaluate.synth_dataset(make_ctx(tmp_path, "evaluate", cfg, variant="b")) is None  # not run yet
    manifest = tmp_path / "results" / "a" / "synth" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    outputs = {"dataset": "/sets/selected", "random_subset_dataset": "/sets/control"}
    manifest.write_text(json.dumps({"kind": "synth", "outputs": outputs}))
    read = {v: evaluate.synth_dataset(make_ctx(tmp_path, "evaluate", cfg, variant=v)) for v in variants}
    assert read == {"a": "/sets/selected", "b": "/sets/selected", "c": "/sets/control"}
