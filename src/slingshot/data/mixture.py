"""Weighted blends of corpora: deterministic order, per-corpus accounting, exact resume.

The corpus drawn at global step ``i`` is a pure function of (seed, weights, i): steps are
grouped in blocks and each block's choices come from an RNG seeded by (seed, block).
So a resume needs only the step and, per corpus, how far into its current epoch it
has read; nothing is repeated or skipped, and the order after a resume is the order
an uninterrupted run would have produced.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from slingshot.data.corpora import CorpusSpec, read_corpus
from slingshot.data.tasks import derive_seed

# A source opens a fresh iterator over its corpus starting at record ``start`` (of an epoch).
Source = Callable[[int], Iterator[dict[str, Any]]]


def list_source(records: Sequence[dict[str, Any]]) -> Source:
    return lambda start: iter(records[start:])


def corpus_source(spec: CorpusSpec) -> Source:
    # Streaming readers cannot seek a line; skipping costs a read but stays exact.
    return lambda start: itertools.islice(read_corpus(spec), start, None)


@dataclass(frozen=True)
class MixtureSample:
    step: int
    corpus: str
    epoch: int
    offset: int  # index of the record within its corpus epoch
    record: dict[str, Any]


class Mixture:
    """Endless iterator over a weighted blend; ``state_dict`` after any sample resumes exactly."""

    def __init__(
        self, sources: dict[str, Source], weights: dict[str, float], seed: int, block_size: int = 1024
    ) -> None:
        if set(sources) != set(weights):
            raise ValueError(
                f"sources {sorted(sources)} and weights {sorted(weights)} name different corpora"
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
        self.names = sorted(sources)  # sorted: the order cannot depend on dict insertion
        self.sources = sources
        total = sum(weights.values())
        self.weights = {n: weights[n] / total for n in self.names}
        self.seed = seed
        self.block_size = block_size
        self.step = 0
        self.epoch = dict.fromkeys(self.names, 0)
        self.offset = dict.fromkeys(self.names, 0)
        self.consumed = dict.fromkeys(self.names, 0)
        self._iters: dict[str, Iterator[dict[str, Any]]] = {}
        self._block: tuple[int, list[str]] | None = None

    def _choice(self, step: int) -> str:
        b = step // self.block_size
        if self._block is None or self._block[0] != b:
            rng = random.Random(derive_seed(self.seed, "mixture", b))
            picks = rng.choices(self.names, weights=[self.weights[n] for n in self.names], k=self.block_size)
            self._block = (b, picks)
        return self._block[1][step % self.block_size]

    def _next_record(self, name: str) -> dict[str, Any]:
        it = self._iters.get(name)
        if it is None:
            it = self._iters[name] = self.sources[name](self.offset[name])
        try:
            return next(it)
        except StopIteration:
            if self.offset[name] == 0:
                raise ValueError(f"corpus {name!r} is empty") from None
            # Epoch boundary: start the corpus again.
            self.epoch[name] += 1
            self.offset[name] = 0
            self._iters[name] = self.sources[name](0)
            return next(self._iters[name])

    def __iter__(self) -> Iterator[MixtureSample]:
        return self

    def __next__(self) -> MixtureSample:
        name = self._choice(self.step)
        record = self._next_record(name)
        sample = MixtureSample(self.step, name, self.epoch[name], self.offset[name], record)
        self.offset[name] += 1
        self.consumed[name] += 1
        self.step += 1
        return sample

    def take(self, n: int) -> list[MixtureSample]:
        return list(itertools.islice(self, n))

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "block_size": self.block_size,
            "weights": dict(self.weights),
            "step": self.step,
            "corpora": {
                n: {"consumed": self.consumed[n], "epoch": self.epoch[n], "offset": self.offset[n]}
                for n in self.names
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; refuses a state from a different blend (a phase must never change silently)."""
        mine = {"seed": self.seed, "block_size": self.block_size, "names": self.names}
        theirs = {"seed": state["seed"], "block_size": state["block_size"], "names": sorted(state["corpora"])}
        if mine != theirs or any(abs(self.weights[n] - state["weights"][n]) > 1e-12 for n in self.names):
            raise ValueError(
                f"mixture state is for another blend: {theirs} {state['weights']} != {mine} {self.weights}"
            )
        self.step = int(state["step"])
        for n in self.names:
            c = state["corpora"][n]
            self.consumed[n], self.epoch[n], self.offset[n] = (
                int(c["consumed"]),
                int(c["epoch"]),
                int(c["offset"]),
            )
        self._iters.clear()
        self._block = None


def mixture_from_specs(
    specs: Iterable[CorpusSpec], weights: dict[str, float], seed: int, block_size: int = 1024
) -> Mixture:
    return Mixture({s.name: corpus_source(s) for s in specs}, weights, seed, block_size)
