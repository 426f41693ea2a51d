"""Task suite on reasoning-gym: named families, deterministic splits, verifiers.

A *task entry* is a plain JSON-able dict (so it can be written to JSONL and read back
by any stage) with the keys::

    id, family, dataset, dataset_kwargs, question, answer, metadata, hash, split

``question``/``answer``/``metadata`` are reasoning-gym's own fields, so the entry can be
handed straight to the dataset's ``score_answer``.

Held-out guarantee: validation and test instances are generated FIRST, and every
training candidate whose content hash (sha256 of the normalised question) is in the
held-out set is dropped. Seeds alone are not trusted: two seeds can produce the same
question (small problem spaces such as ``gcd`` over 1..50 collide often).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SPLITS: tuple[str, ...] = ("train", "validation", "test")


class UnknownTaskError(KeyError):
    """A task family name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0])


class TaskFamily(BaseModel):
    """A named reasoning-gym task at one difficulty setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dataset: str = Field(description="reasoning-gym dataset name, e.g. 'gcd'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="reasoning-gym config overrides")
    math: bool = Field(default=False, description="answer is a number: verify with math-verify first")
    # Difficulty knobs for "new problems from few-shot examples": kwarg -> (lowest, highest)
    # allowed value when perturbing. Bounds keep the generator's own validation happy.
    knobs: dict[str, tuple[int, int]] = Field(default_factory=dict)


def _fam(name: str, dataset: str, math: bool = False, knobs: dict | None = None, **kwargs: Any) -> TaskFamily:
    return TaskFamily(name=name, dataset=dataset, kwargs=kwargs, math=math, knobs=knobs or {})


# Small settings so traces stay a few hundred characters: tiny models, CPU recipe.
_BUILTIN: tuple[TaskFamily, ...] = (
    _fam(
        "basic_arithmetic",
        "basic_arithmetic",
        True,
        {"max_terms": (2, 5), "max_digits": (1, 3)},
        min_terms=2,
        max_terms=3,
        min_digits=1,
        max_digits=2,
    ),
    _fam(
        "chain_sum",
        "chain_sum",
        True,
        {"max_terms": (2, 6), "max_digits": (1, 3)},
        min_terms=2,
        max_terms=4,
        min_digits=1,
        max_digits=2,
    ),
    _fam(
        "products",
        "products",
        True,
        {"max_digits": (1, 3)},
        min_terms=2,
        max_terms=2,
        min_digits=1,
        max_digits=2,
    ),
    _fam(
        "gcd",
        "gcd",
        True,
        {"max_value": (20, 1000)},
        min_numbers=2,
        max_numbers=2,
        min_value=2,
        max_value=200,
    ),
    _fam(
        "lcm", "lcm", True, {"max_value": (20, 100)}, min_numbers=2, max_numbers=2, min_value=2, max_value=50
    ),
    _fam(
        "number_sorting",
        "number_sorting",
        False,
        {"max_numbers": (3, 8)},
        min_numbers=3,
        max_numbers=5,
        min_decimals=0,
        max_decimals=1,
        min_value=-50.0,
        max_value=50.0,
    ),
    _fam("letter_counting", "letter_counting", True, {"max_words": (3, 10)}, min_words=3, max_words=6),
    _fam(
        "simple_equations",
        "simple_equations",
        True,
        {"max_terms": (2, 4), "max_value": (10, 100)},
        min_terms=2,
        max_terms=3,
        min_value=1,
        max_value=30,
    ),
    _fam(
        "base_conversion",
        "base_conversion",
        False,
        {"max_value": (16, 1000), "max_base": (4, 16)},
        min_base=2,
        max_base=16,
        min_value=1,
        max_value=200,
    ),
    _fam(
        "countdown",
        "countdown",
        False,
        {"max_numbers": (3, 4)},
        min_numbers=3,
        max_numbers=3,
        min_value=1,
        max_value=20,
        min_target=10,
        max_target=100,
    ),
    _fam(
        "prime_factorization",
        "prime_factorization",
        False,
        {"max_value": (100, 2000)},
        min_value=2,
        max_value=1000,
    ),
    _fam(
        "spell_backward", "spell_backward", False, {"max_word_len": (4, 10)}, min_word_len=3, max_word_len=7
    ),
)

TASK_FAMILIES: dict[str, TaskFamily] = {f.name: f for f in _BUILTIN}
BUILTIN_FAMILIES: tuple[str, ...] = tuple(sorted(f.name for f in _BUILTIN))


def family_names() -> list[str]:
    return sorted(TASK_FAMILIES)


def get_family(name: str | TaskFamily) -> TaskFamily:
    """Look a family up by name; an unknown name fails listing the valid ones."""
    if isinstance(name, TaskFamily):
        return name
    try:
        return TASK_FAMILIES[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task family {name!r}; valid names: {', '.join(family_names())}"
        ) from None


def check_settings(family: str, kwargs: dict[str, Any]) -> None:
    """Fail with reasoning-gym's own reason if ``kwargs`` is not a valid setting of ``family``."""
    fam = get_family(family)
    try:
        _dataset(fam.dataset, _freeze({**fam.kwargs, **kwargs}), 0, 1)
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(
            f"invalid reasoning-gym settings for {family!r}: {err or type(err).__name__}"
        ) from None


def register_family(family: TaskFamily) -> None:
    """Add a family (e.g. a harder setting) at runtime; the dataset must exist in reasoning-gym."""
    from reasoning_gym.factory import DATASETS

    if family.dataset not in DATASETS:
        raise UnknownTaskError(
            f"reasoning-gym has no dataset {family.dataset!r}; valid names: {', '.join(sorted(DATASETS))}"
        )
    TASK_FAMILIES[family.name] = family


def normalize_question(text: str) -> str:
    """Case- and whitespace-insensitive form of a question (what 'the same problem' means)."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def content_hash(question: str) -> str:
    return hashlib.sha256(normalize_question(question).encode("utf-8")).hexdigest()


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from a base seed and labels: independent streams per family/split/chunk."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@lru_cache(maxsize=256)
def _dataset(dataset: str, kwargs_items: tuple[tuple[str, Any], ...], seed: int, size: int) -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset(dataset, seed=seed, size=size, **dict(kwargs_items))


def _freeze(kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


def _to_entry(
    family: TaskFamily, kwargs: dict[str, Any], raw: dict[str, Any], split: str, seed: int, idx: int
) -> dict:
    h = content_hash(raw["question"])
    return {
        "id": f"{family.name}/{h[:16]}",
        "family": family.name,
        "dataset": family.dataset,
        "dataset_kwargs": dict(kwargs),
        "question": raw["question"],
        "answer": str(raw["answer"]),
        "metadata": raw.get("metadata", {}),
        "hash": h,
        "split": split,
        "source": {"seed": seed, "index": idx},
    }


# Ill-posed instances reasoning-gym occasionally emits (e.g. simple_equations "0 = 0"
# with an arbitrary answer): no reasoning can reach their answer, so they are skipped.
_WELL_POSED: dict[str, Any] = {
    "simple_equations": lambda raw: raw["metadata"]["variable"] in raw["metadata"]["equation"],
}


def is_well_posed(dataset: str, raw: dict) -> bool:
    return bool(_WELL_POSED.get(dataset, lambda raw: True)(raw))


def make_instance(
    family: str | TaskFamily, kwargs: dict[str, Any], seed: int, split: str = "synth"
) -> dict | None:
    """One entry of ``family`` with these reasoning-gym kwargs and seed (None if ill-posed)."""
    fam = get_family(family)
    raw = _dataset(fam.dataset, _freeze(kwargs), seed, 1)[0]
    return _to_entry(fam, kwargs, raw, split, seed, 0) if is_well_posed(fam.dataset, raw) else None


def load_entries(path: str | os.PathLike[str]) -> list[dict]:
    """Task entries from a split file written by the data stage (``tasks/<split>.jsonl``)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def iter_instances(
    family: str | TaskFamily,
    seed: int,
    split: str = "train",
    kwargs: dict[str, Any] | None = None,
    chunk: int = 256,
) -> Iterator[dict]:
    """Endless stream of entries of one family (seeded chunks, so it never runs dry)."""
    fam = get_family(family)
    kw = {**fam.kwargs, **(kwargs or {})}
    c = 0
    while True:
        chunk_seed = derive_seed(seed, fam.name, split, c)
        ds = _dataset(fam.dataset, _freeze(kw), chunk_seed, chunk)
        for i in range(chunk):
            raw = ds[i]
            if is_well_posed(fam.dataset, raw):
                yield _to_entry(fam, kw, raw, split, chunk_seed, i)
        c += 1


def _take_unique(
    stream: Iterator[dict], n: int, exclude: set[str], max_draws: int, family: str, split: str
) -> list[dict]:
    out: list[dict] = []
    seen: set[str] = set()
    draws = 0
    while len(out) < n:
        if draws >= max_draws:
            raise ValueError(
                f"task family {family!r}: only {len(out)} distinct {split} instances of {n} after "
                f"{max_draws} draws (problem space too small for the held-out exclusion); "
                "lower the split sizes or widen the family's difficulty"
            )
        e = next(stream)
        draws += 1
        if e["hash"] in exclude or e["hash"] in seen:
            continue
        seen.add(e["hash"])
        out.append(e)
    return out


class SplitSizes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: int = 200
    validation: int = 20
    test: int = 50


def make_splits(
    families: Sequence[str | TaskFamily],
    sizes: SplitSizes,
    seed: int,
    max_draw_factor: int = 20,
    settings: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, list[dict]]:
    """Per-family train/validation/test entries; held-out hashes never appear in train.

    Test is drawn first, then validation (excluding test), then train (excluding both).
    Within a split, duplicates (same hash) are dropped too. ``settings`` overrides a
    family's reasoning-gym kwargs (its difficulty) by family name.
    """
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for family in families:
        fam = get_family(family)
        kwargs = (settings or {}).get(fam.name)
        excluded: set[str] = set()
        for split in ("test", "validation", "train"):
            n = getattr(sizes, split)
            stream = iter_instances(fam, seed, split, kwargs)
            got = _take_unique(stream, n, excluded, max(n * max_draw_factor, 100), fam.name, split)
            if split != "train":
                excluded |= {e["hash"] for e in got}
            out[split].extend(got)
    # Across families a question text could coincide too: enforce globally, not per family.
    held_out = {e["hash"] for s in ("validation", "test") for e in out[s]}
    out["train"] = [e for e in out["train"] if e["hash"] not in held_out]
    return out


def held_out_hashes(splits: dict[str, list[dict]]) -> set[str]:
    return {e["hash"] for s in ("validation", "test") for e in splits.get(s, [])}


def filter_held_out(entries: Iterable[dict], exclude: set[str]) -> Iterator[dict]:
    """Drop any entry (e.g. a synthesized problem) whose question is in the held-out set."""
    for e in entries:
        h = e.get("hash") or content_hash(e["question"])
        if h not in exclude:
            yield e


def rg_score(entry: dict, answer: str | None) -> float:
    """reasoning-gym's verifier for the entry's dataset (partial credit possible, in [0, 1]).

    No answer scores 0 (some reasoning-gym verifiers give 0.01 even for ``None``).
    """
    if answer is None:
        return 0.0
    dataset = entry.get("dataset") or entry.get("metadata", {}).get("source_dataset")
    if dataset is None:
        raise ValueError(f"entry {entry.get('id')!r} names no reasoning-gym dataset")
    kwargs = entry.get("dataset_kwargs") or {}
    ds = _dataset(dataset, _freeze(kwargs), 0, 1)
    try:
        value = float(ds.score_answer(answer, entry))
    except Exception:  # a verifier crashing on garbage model output means "wrong", not a crash
        value = 0.0
    return min(1.0, max(0.0, value))
