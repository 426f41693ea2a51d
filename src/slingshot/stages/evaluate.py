"""Evaluation stage (SPEC §6): one stage's final model on held-out test instances.

For each task family, ``prompts_per_task`` test instances are drawn by a fixed seed
(the same instances for every stage and variant, so the numbers are comparable), each
answered ``n_samples`` times through the rollout backend. Per family and overall:

- pass@1 = mean correctness over the n samples (averaged over prompts),
- unbiased pass@k = 1 - C(n-c, k) / C(n, k) for every k in ``config.k``,
- mean response length (generated tokens, the stop token not counted),
- parse rate: the fraction of samples with an extractable final answer.

A sample that hit ``max_new_tokens`` before its stop token is truncated: it counts as
unparsed and wrong (as in ProRL's reward), even if a box happened to appear in it.

Outputs (``output_dir``): ``eval_table.csv`` / ``eval_table.json`` (one row per family
plus ``all``), ``samples.jsonl`` (every completion with its verdict). Families done are
cached in the work dir, so a requeued job does not generate them again.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slingshot.algorithms.metrics import pass_at_k
from slingshot.context import StageContext, StageResult
from slingshot.data.tasks import content_hash, derive_seed, load_entries
from slingshot.io import atomic_write_json, atomic_write_text, sha256_file, sha256_json
from slingshot.rewards import extract, score

ALL = "all"  # the row aggregating every family
TABLE_COLUMNS_BASE = ("family", "prompts", "samples", "pass_at_1")


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
    """The question as a user turn, rendered by the chat template with the generation prompt.

    The question text is the same prompt the teacher traces (and so SFT and ProRL) use.
    """
    messages = [{"role": "user", "content": entry["question"]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, entry: dict) -> list[int]:
    # The template already holds every special token: do not let the tokenizer add a BOS.
    return list(tokenizer(prompt_text(tokenizer, entry), add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- scoring
def judge(entry: dict, completion: str, finished: bool) -> tuple[bool, bool]:
    """(parsed, correct) of one completion; a truncated completion is neither."""
    if not finished:
        return False, False
    parsed = extract(completion).parse_ok
    return parsed, parsed and score(entry, completion, binary=True) == 1.0


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
        out["pass_at_1"] = _mean([pass_at_k(len(g), sum(s.correct for s in g), 1) for g in groups])
        for k in ks:
            if any(len(g) < k for g in groups):
                raise ValueError(f"pass@{k} needs at least {k} samples per prompt")
            out[f"pass_at_{k}"] = _mean([pass_at_k(len(g), sum(s.correct for s in g), k) for g in groups])
        out["response_tokens"] = _mean([s.tokens for s in samples])
        out["parse_rate"] = _mean([float(s.parsed) for s in samples])
        out["truncated_rate"] = _mean([float(not s.finished) for s in samples])
        return out

    rows = [row(f, [g for (fam, _), g in per_prompt.items() if fam == f]) for f in families]
    rows.append(row(ALL, list(per_prompt.values())))
    return rows


def _mean(values: Sequence[float]) -> float:
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
) -> list[SampleResult]:
    """All samples of one family in one batched generate call, decoded and judged."""
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
            parsed, correct = judge(entry, text, ro.finished)
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


def _max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def answer_budget(tokenizer: Any, entries: Sequence[dict], max_new_tokens: int, positions: int | None) -> int:
    """max_new_tokens, shortened so the family's longest prompt plus its answer fits the model.

    Per family (one batch each), so one family's long prompts do not cut every answer short.
    """
    if positions is None:
        return max_new_tokens
    longest = max(len(encode_prompt(tokenizer, e)) for e in entries)
    if longest >= positions:
        raise ValueError(
            f"a {entries[0]['family']} prompt has {longest} tokens; the model has {positions} positions"
        )
    return min(max_new_tokens, positions - longest)


def _gather(results: list[SampleResult]) -> list[SampleResult]:
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return results
    everything: list[list[SampleResult] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everything, results)
    return [r for part in everything for r in (part or [])]


def run(ctx: StageContext, rollout_factory: Any = None) -> StageResult:
    """Evaluate ``ctx.input_model_dir``; ``rollout_factory(model, tokenizer, stop_ids)`` replaces the
    configured backend (tests)."""
    import torch

    from slingshot.models.hf import load_model_and_tokenizer
    from slingshot.rollout import make_rollout

    cfg = ctx.config
    started = time.monotonic()
    data = ctx.upstream_of_kind("data")["outputs"]
    test_path = Path(data["tasks_test"])
    entries = load_entries(test_path)
    # The data stage already keeps held-out hashes out of training; checking again here
    # costs one read and guards against a user-supplied or edited split file.
    train_hashes = {e["hash"] for e in load_entries(data["tasks_train"])}
    if data.get("corpus_reasoning"):  # the prompts pretraining and SFT read as text
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
    seed = ctx.pipeline.pipeline.seed
    chosen = select_prompts(entries, cfg.prompts_per_task, seed)
    prompts_path = ctx.output_dir / "eval_prompts.jsonl"
    if ctx.dist.is_main:
        atomic_write_text(prompts_path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in chosen))
    ctx.tracker.log_input("tasks-test", test_path, sha256_file(test_path), context="evaluation")
    ctx.tracker.log_input(
        "eval-prompts", prompts_path, sha256_json([e["hash"] for e in chosen]), context="evaluation"
    )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model_dir = ctx.input_model_dir
    if model_dir is None:
        raise RuntimeError(f"{ctx.stage}: no model to evaluate (no upstream model stage)")
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype=dtype, device=device)
    stop_ids = [tokenizer.eos_token_id]
    rollout = (rollout_factory or (lambda m, t, s: make_rollout(cfg.rollout, m, t, s)))(
        model, tokenizer, stop_ids
    )

    families = sorted({e["family"] for e in chosen})
    mine = families[ctx.dist.rank :: ctx.dist.world_size]
    cache_dir = ctx.work_dir / "families"
    results: list[SampleResult] = []
    budgets: dict[str, int] = {}
    for family in mine:
        cached = cache_dir / f"{family}.json"
        if cached.is_file():  # done before a requeue: same prompts, same seed, same model
            results += [SampleResult(**r) for r in json.loads(cached.read_text())]
            continue
        t0 = time.monotonic()
        family_entries = [e for e in chosen if e["family"] == family]
        max_new = answer_budget(tokenizer, family_entries, cfg.max_new_tokens, _max_positions(model))
        budgets[family] = max_new
        if max_new < cfg.max_new_tokens:
            print(
                f"[{ctx.stage}] {family}: max_new_tokens {cfg.max_new_tokens} -> {max_new} (model positions)"
            )
        got = evaluate_family(
            rollout,
            tokenizer,
            family_entries,
            cfg.n_samples,
            max_new,
            cfg.temperature,
            derive_seed(seed, "evaluate-samples", family),
            stop_ids,
        )
        atomic_write_json(cached, [asdict(r) for r in got])
        results += got
        print(
            f"[{ctx.stage}] {family}: pass@1 {_mean([float(r.correct) for r in got]):.3f} "
            f"parse {_mean([float(r.parsed) for r in got]):.3f} ({time.monotonic() - t0:.1f}s)",
            flush=True,
        )
    results = _gather(results)
    rows = summarize(results, cfg.k)
    metrics = flat_metrics(rows)
    metrics["eval_seconds"] = time.monotonic() - started

    outputs = {
        "table_csv": str(ctx.output_dir / "eval_table.csv"),
        "table_json": str(ctx.output_dir / "eval_table.json"),
        "samples": str(ctx.output_dir / "samples.jsonl"),
        "prompts": str(prompts_path),
    }
    if ctx.dist.is_main:
        atomic_write_text(outputs["table_csv"], table_csv(rows))
        atomic_write_json(outputs["table_json"], rows)
        atomic_write_text(
            outputs["samples"], "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in results)
        )
        ctx.tracker.log_metrics(metrics, step=0)
        ctx.tracker.log_artifact(outputs["table_csv"])
        ctx.tracker.log_artifact(outputs["table_json"])
    generated = sum(r.tokens for r in results)
    return StageResult(
        outputs=outputs,
        metrics=metrics,
        tokens=generated,
        extra={
            "evaluation": {
                "model_dir": str(model_dir),
                "model_from": ctx.model_from,
                "prompts": len(chosen),
                "n_samples": cfg.n_samples,
                "k": sorted(set(cfg.k)),
                "temperature": cfg.temperature,
                "max_new_tokens": cfg.max_new_tokens,
                "max_new_tokens_by_family": budgets,  # shortened where prompts are long (rank 0's)
                "table": rows,
            }
        },
    )
