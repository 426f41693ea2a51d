"""Evaluation of a model on held-out tasks (SPEC §6), independent of the rollout backend.

* prompts: a fixed, seeded draw of test instances per family, rendered as the user turn
  SFT and RL use (:func:`slingshot.data.teacher.task_prompt` through the chat template);
* scoring: a completion that hit ``max_new_tokens`` before its stop token is truncated and
  counts as unparsed and wrong (as in ProRL's reward), even if a box appeared in it;
* the table: per family and overall, pass@1 (mean correctness), unbiased
  pass@k = 1 - C(n-c, k) / C(n, k) averaged over prompts, mean response length (stop token
  not counted), parse rate and truncated rate.

Benchmarks (``stages.evaluate.benchmarks``, read by :mod:`slingshot.data.benchmarks`) are
families of their own, ``bench/<name>``: the same prompts, generation and table, graded by
math-verify on the extracted answer (for GSM8K and AIME the last number of the answer when
nothing is boxed), multiple choice by its letter; their rows are not part of ``all``. A
benchmark whose prompts occur in any training data of the recipe is refused by name.

The evaluation stage (``slingshot.stages.evaluate``) is the loop over families around these.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slingshot.algorithms.metrics import pass_at_k
from slingshot.config import BenchmarkConfig, PipelineConfig
from slingshot.data.benchmarks import read_benchmark, read_prompts
from slingshot.data.chat import prompt_token_ids, render_prompt
from slingshot.data.prompt_sets import load_prompt_set
from slingshot.data.tasks import content_hash, derive_seed, load_entries
from slingshot.data.teacher import task_prompt
from slingshot.rewards import answer_region, extract, math_equal, score
from slingshot.rewards.extract import THINK_TAGS

ALL = "all"  # the row aggregating every family


@dataclass
class SampleResult:
    entry_id: str
    family: str
    sample: int
    completion: str
    tokens: int  # generated tokens, stop token excluded
    finished: bool
    parsed: bool
    correct: bool


# --------------------------------------------------------------------------- prompts
def check_held_out(entries: Sequence[dict], data: dict[str, str]) -> None:
    """Raise if a test instance occurs in training data: the train split or the prompts of the
    reasoning corpus pretraining and SFT read as text (compared by normalised question)."""
    # The data stage already keeps held-out hashes out of training; checking again here
    # costs one read and guards against a user-supplied or edited split file.
    train_hashes = {e["hash"] for e in load_entries(data["tasks_train"])}
    if data.get("corpus_reasoning"):
        train_hashes |= {
            content_hash(r["prompt"]) for r in load_entries(data["corpus_reasoning"]) if "prompt" in r
        }
    leaked = [
        e["id"] for e in entries if e["hash"] in train_hashes or content_hash(e["question"]) in train_hashes
    ]
    if leaked:
        raise RuntimeError(
            f"{len(leaked)} test instances also occur in training data (tasks_train or the reasoning "
            f"corpus), e.g. {leaked[:3]}"
        )


def load_benchmarks(specs: Sequence[BenchmarkConfig], seed: int) -> dict[str, list[dict]]:
    """Each benchmark's entries by name: every row, or a seeded draw of ``limit`` (as for tasks)."""
    out = {}
    for spec in specs:
        entries = read_benchmark(spec)
        out[spec.name] = select_prompts(entries, spec.limit, seed) if spec.limit else entries
    return out


def training_prompt_sources(
    cfg: PipelineConfig, variant: str, data: dict[str, str], synth_dataset: str | None = None
) -> dict[str, Iterable[str]]:
    """The prompts of every training source of ``variant``, by name (read lazily): the tasks
    train split, the reasoning corpus, SFT's extra datasets, the synthesized set and the ProRL
    prompt sets (as the data stage converted them)."""
    sources: dict[str, Iterable[str]] = {
        "tasks_train": (e["question"] for e in load_entries(data["tasks_train"]))
    }
    if data.get("corpus_reasoning"):
        sources["corpus_reasoning"] = read_prompts(data["corpus_reasoning"], "prompt")
    stages = cfg.variant_stages(variant)
    if stages.sft.enabled:
        for i, ds in enumerate(stages.sft.extra_datasets):
            fmt = "hf_disk" if ds.format == "hf" else ds.format
            sources[f"stages.sft.extra_datasets.{i}"] = read_prompts(ds.path, ds.prompt_field, fmt)
    if synth_dataset:
        sources["synth"] = read_prompts(synth_dataset, "problem", "hf_disk")
    if stages.prorl.enabled:
        for spec in stages.prorl.datasets:
            entries = load_prompt_set(data, spec.name)
            sources[f"stages.prorl.datasets.{spec.name}"] = (e["question"] for e in entries)
    return sources


def check_benchmarks_held_out(
    benchmarks: Mapping[str, Sequence[dict]], sources: Mapping[str, Iterable[str]]
) -> None:
    """Raise naming every benchmark whose question (or rendered prompt) occurs in a training source.

    Compared by content hash of the normalised text (case and spacing do not matter), as the
    held-out check of the generated tasks.
    """
    owner = {
        h: (name, e["id"])
        for name, es in benchmarks.items()
        for e in es
        for h in (e["hash"], e["prompt_hash"])
    }
    found: dict[str, dict[str, set[str]]] = {}  # benchmark -> training source -> entry ids
    for source, prompts in sources.items():
        for prompt in prompts:
            hit = owner.get(content_hash(prompt))
            if hit is not None:
                found.setdefault(hit[0], {}).setdefault(source, set()).add(hit[1])
    lines = []
    for name, by_source in sorted(found.items()):
        leaked = len(set().union(*by_source.values()))
        where = "; ".join(
            f"{src}: {len(ids)}, e.g. {sorted(ids)[:3]}" for src, ids in sorted(by_source.items())
        )
        lines.append(f"benchmark {name!r}: {leaked} prompts also occur in training data ({where})")
    if lines:
        raise RuntimeError("contaminated benchmarks refused:\n" + "\n".join(lines))


def select_prompts(entries: Sequence[dict], prompts_per_task: int, seed: int) -> list[dict]:
    """``prompts_per_task`` entries per family, drawn by ``seed`` independently of file order.

    Sorting by content hash first makes the draw depend only on WHICH instances exist,
    so every evaluation node of a pipeline sees the same prompts.
    """
    by_family: dict[str, list[dict]] = {}
    for entry in entries:
        by_family.setdefault(entry["family"], []).append(entry)
    chosen: list[dict] = []
    for family in sorted(by_family):
        pool = sorted(by_family[family], key=lambda e: e["hash"])
        rng = random.Random(derive_seed(seed, "evaluate", family))
        chosen += rng.sample(pool, min(prompts_per_task, len(pool)))
    return chosen


def prompt_text(tokenizer: Any, entry: dict) -> str:
    """The task as a user turn, rendered by the chat template with the generation prompt.

    The user turn is :func:`slingshot.data.teacher.task_prompt`, the prompt the teacher
    traces (and so SFT and ProRL) use.
    """
    return render_prompt(tokenizer, task_prompt(entry))


def encode_prompt(tokenizer: Any, entry: dict) -> list[int]:
    return prompt_token_ids(tokenizer, task_prompt(entry))


# --------------------------------------------------------------------------- scoring
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)\s]|$)")


def benchmark_answer(entry: dict, completion: str, tags: tuple[str, str] = THINK_TAGS) -> str | None:
    """The answer a completion gives to a benchmark entry: boxed or tagged after the thought
    (``tags``: the thinking tags); for GSM8K/AIME else the last number of that region;
    multiple choice reduced to its letter."""
    answer = extract(completion, tags).answer
    if answer is None and entry["benchmark"] in ("gsm8k", "aime"):
        region = answer_region(completion, tags)[1]
        numbers = _NUMBER.findall(region) if region is not None else []
        answer = numbers[-1].replace(",", "") if numbers else None
    if answer is None or entry["benchmark"] != "multiple_choice":
        return answer
    text = re.sub(r"\\text(?:bf)?\{([^}]*)\}", r"\1", answer).strip().upper()
    letter = _LETTER.match(text)
    return letter.group(1) if letter else None


def judge(
    entry: dict, completion: str, finished: bool, tags: tuple[str, str] = THINK_TAGS
) -> tuple[bool, bool]:
    """(parsed, correct) of one completion; a truncated completion is neither."""
    if not finished:
        return False, False
    if "benchmark" in entry:
        answer = benchmark_answer(entry, completion, tags)
        if answer is None:
            return False, False
        if entry["benchmark"] == "multiple_choice":
            return True, answer == entry["answer"]
        return True, math_equal(str(entry["answer"]), answer)
    parsed = extract(completion, tags).parse_ok
    return parsed, parsed and score(entry, completion, binary=True, tags=tags) == 1.0


def summarize(results: Sequence[SampleResult], ks: Sequence[int]) -> list[dict[str, Any]]:
    """Table rows: one per family (sorted) and a last ``all`` row over every prompt.

    pass@k is computed per prompt from its (n, c) and averaged over prompts.
    """
    per_prompt: dict[tuple[str, str], list[SampleResult]] = {}
    for r in results:
        per_prompt.setdefault((r.family, r.entry_id), []).append(r)
    families = sorted({family for family, _ in per_prompt})
    ks = sorted(set(ks) - {1})

    def row(family: str, groups: list[list[SampleResult]]) -> dict[str, Any]:
        samples = [s for g in groups for s in g]
        out: dict[str, Any] = {"family": family, "prompts": len(groups), "samples": len(samples)}
        out["pass_at_1"] = mean([pass_at_k(len(g), sum(s.correct for s in g), 1) for g in groups])
        for k in ks:
            if any(len(g) < k for g in groups):
                raise ValueError(f"pass@{k} needs at least {k} samples per prompt")
            out[f"pass_at_{k}"] = mean([pass_at_k(len(g), sum(s.correct for s in g), k) for g in groups])
        out["response_tokens"] = mean([s.tokens for s in samples])
        out["parse_rate"] = mean([float(s.parsed) for s in samples])
        out["truncated_rate"] = mean([float(not s.finished) for s in samples])
        return out

    rows = [row(f, [g for (fam, _), g in per_prompt.items() if fam == f]) for f in families]
    rows.append(row(ALL, list(per_prompt.values())))
    return rows


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def flat_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """MLflow/manifest metrics: overall under plain names, per family as ``<family>/<name>``."""
    metrics: dict[str, float] = {}
    for r in rows:
        prefix = "" if r["family"] == ALL else f"{r['family']}/"
        for key, value in r.items():
            if key in ("family", "samples") or (key == "prompts" and prefix):
                continue
            metrics[f"{prefix}{key}"] = float(value)
    return metrics


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buffer.getvalue()


# --------------------------------------------------------------------------- generation
def evaluate_family(
    rollout: Any,
    tokenizer: Any,
    entries: Sequence[dict],
    n: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    stop_token_ids: Sequence[int],
    think_tags: tuple[str, str] = THINK_TAGS,
) -> list[SampleResult]:
    """All samples of ``entries`` (one family's batch) in one generate call, decoded and judged."""
    prompts = [encode_prompt(tokenizer, e) for e in entries]
    groups = rollout.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    stops = set(stop_token_ids)
    out = []
    for entry, group in zip(entries, groups, strict=True):
        for i, ro in enumerate(group):
            ids = list(ro.completion_ids)
            if ro.finished and ids and ids[-1] in stops:
                ids = ids[:-1]
            # Keep special tokens: </think> is one and the answer extractor needs it.
            text = tokenizer.decode(ids, skip_special_tokens=False)
            parsed, correct = judge(entry, text, ro.finished, think_tags)
            out.append(
                SampleResult(
                    entry_id=str(entry["id"]),
                    family=entry["family"],
                    sample=i,
                    completion=text,
                    tokens=len(ids),
                    finished=ro.finished,
                    parsed=parsed,
                    correct=correct,
                )
            )
    return out


@dataclass(frozen=True)
class EvalBatch:
    """Up to ``prompts_per_batch`` prompts of one family, answered in one generate call.

    The unit ranks share and seeds derive from: its seed is the family's and the batch's
    index in it, never a rank, so any number of ranks samples what one does.
    """

    family: str
    index: int  # within the family
    entries: tuple[dict, ...]


def eval_batches(groups: Mapping[str, Sequence[dict]], prompts_per_batch: int) -> list[EvalBatch]:
    """Every family's prompts (families sorted, prompts in order) cut into batches."""
    return [
        EvalBatch(family, i // prompts_per_batch, tuple(entries[i : i + prompts_per_batch]))
        for family in sorted(groups)
        for entries in [list(groups[family])]
        for i in range(0, len(entries), prompts_per_batch)
    ]


def max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def answer_budget(tokenizer: Any, entries: Sequence[dict], max_new_tokens: int, positions: int | None) -> int:
    """max_new_tokens, shortened so the family's longest prompt plus its answer fits the model.

    Per family (from all its prompts, so every rank and batch of it gets the same budget), so
    one family's long prompts do not cut every answer short.
    """
    if positions is None:
        return max_new_tokens
    longest = max(len(encode_prompt(tokenizer, e)) for e in entries)
    if longest >= positions:
        raise ValueError(
            f"a {entries[0]['family']} prompt has {longest} tokens; the model has {positions} positions"
        )
    return min(max_new_tokens, positions - longest)
