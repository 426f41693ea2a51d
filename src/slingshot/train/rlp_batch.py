"""RLP batch construction (SPEC §2): which text positions to train on, and the padded
tensors the stage scores and updates on.

A *position* is a place t in a document: its context x_<t (at most ``context_tokens``
tokens, preceded by the tokenizer's BOS when the document start is in view, which is
what pretraining saw) and its target x_t..x_{t+k-1}. The stage samples G thoughts per
position from the prompt ``context + <think>`` and builds, per thought, the sequence

    context  <think>  c_1 .. c_n  </think>  x_t .. x_{t+k-1}

A thought that reaches ``thought_tokens`` without closing gets ``</think>`` appended so
the target is still predicted after a closed thought (the RLP format); that appended
token was not sampled, so it is not an action: it carries no old log-prob and no
gradient. A sampled ``</think>`` IS an action (the choice to stop thinking) and is
trained like every other thought token.

Everything is indexed in the layout of :func:`slingshot.train.logprobs.token_logprobs`:
column j of ``logp`` is log p(ids[j+1] | ids[:j+1]), so the thought mask and the target
index point at ``j = (token index) − 1``.

:class:`PositionStream` draws positions from a corpus in order, resumably: its state
(epoch, next document, positions already drawn but not yet used) goes into the
checkpoint, and each document's random choices come from a generator seeded by
(seed, epoch, document index), so a resumed stream repeats exactly what an
uninterrupted one would have drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from slingshot.rollout.base import Rollout

if TYPE_CHECKING:
    from slingshot.config import RLPConfig
    from slingshot.train.logprobs import PassSettings


@dataclass(frozen=True)
class Position:
    doc_index: int  # record index in the corpus (within the epoch)
    t: int  # index of the first target token in the document's tokens
    context: tuple[int, ...]  # x_<t (truncated on the left), BOS first if the document start is in view
    target: tuple[int, ...]  # x_t .. x_{t+k-1}


@dataclass
class ThoughtBatch:
    """B·G teacher-forced sequences ``context <think> c </think> target`` (right-padded)."""

    input_ids: torch.Tensor  # [N, L] long, N = B·G, row b·G + g
    attention_mask: torch.Tensor  # [N, L] long
    thought_mask: torch.Tensor  # [N, L-1] bool: logp columns of SAMPLED thought tokens
    target_index: torch.Tensor  # [N, k] long: logp columns of the k target tokens
    thought_lengths: torch.Tensor  # [N] long: sampled thought tokens (incl. a sampled </think>)
    closed: torch.Tensor  # [N] bool: the thought ended with a sampled </think>
    groups: tuple[int, int]  # (B, G)

    def rows(self, start: int, stop: int) -> ThoughtBatch:
        """Rows [start, stop) trimmed to their longest sequence (a micro-batch)."""
        width = int(self.attention_mask[start:stop].sum(dim=1).max())
        return ThoughtBatch(
            input_ids=self.input_ids[start:stop, :width],
            attention_mask=self.attention_mask[start:stop, :width],
            thought_mask=self.thought_mask[start:stop, : width - 1],
            target_index=self.target_index[start:stop],
            thought_lengths=self.thought_lengths[start:stop],
            closed=self.closed[start:stop],
            groups=self.groups,
        )

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class BaselineBatch:
    """B sequences ``context target`` with no thought, for the EMA teacher's S_ema."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    target_index: torch.Tensor  # [B, k]: logp columns of the target tokens


def prompt_ids(position: Position, think_open: int) -> list[int]:
    """The generation prompt of a position: its context followed by ``<think>``."""
    return [*position.context, think_open]


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    return ids, attention


def build_thought_batch(
    positions: Sequence[Position],
    rollouts: Sequence[Sequence[Rollout]],
    think_open: int,
    think_close: int,
    pad_id: int,
) -> ThoughtBatch:
    """Sequences, thought mask and target index for ``rollouts[b][g]`` of ``positions[b]``.

    Right padding keeps every real token at the position ids it had during generation
    (0..len-1) without passing position_ids, and causal attention never looks right.
    """
    if len(positions) != len(rollouts) or not positions:
        raise ValueError(f"{len(positions)} positions but {len(rollouts)} rollout groups")
    group = len(rollouts[0])
    if any(len(r) != group for r in rollouts):
        raise ValueError("every position needs the same number of thoughts (G)")
    k = len(positions[0].target)
    if any(len(p.target) != k for p in positions):
        raise ValueError("every position needs the same number of target tokens (k)")
    rows: list[list[int]] = []
    # Per row: (first thought token, sampled thought tokens, first target token).
    spans: list[tuple[int, int, int]] = []
    lengths, closed = [], []
    for position, thoughts in zip(positions, rollouts, strict=True):
        prompt = prompt_ids(position, think_open)
        for rollout in thoughts:
            if list(rollout.prompt_ids) != prompt:
                raise ValueError("a rollout's prompt is not its position's context + <think>")
            sampled = list(rollout.completion_ids)
            ends_closed = bool(sampled) and sampled[-1] == think_close
            thought = sampled if ends_closed else [*sampled, think_close]
            spans.append((len(prompt), len(sampled), len(prompt) + len(thought)))
            rows.append([*prompt, *thought, *position.target])
            lengths.append(len(sampled))
            closed.append(ends_closed)
    ids, attention = _right_pad(rows, pad_id)
    thought_mask = torch.zeros((len(rows), ids.shape[1] - 1), dtype=torch.bool)
    target_index = torch.empty((len(rows), k), dtype=torch.long)
    for i, (first, n_sampled, target_start) in enumerate(spans):
        thought_mask[i, first - 1 : first - 1 + n_sampled] = True
        target_index[i] = torch.arange(target_start - 1, target_start - 1 + k)
    return ThoughtBatch(
        input_ids=ids,
        attention_mask=attention,
        thought_mask=thought_mask,
        target_index=target_index,
        thought_lengths=torch.tensor(lengths, dtype=torch.long),
        closed=torch.tensor(closed, dtype=torch.bool),
        groups=(len(positions), group),
    )


def build_baseline_batch(positions: Sequence[Position], pad_id: int) -> BaselineBatch:
    """``context target`` per position (no thought): what the EMA teacher scores."""
    rows = [[*p.context, *p.target] for p in positions]
    ids, attention = _right_pad(rows, pad_id)
    target_index = torch.stack(
        [torch.arange(len(p.context) - 1, len(p.context) - 1 + len(p.target)) for p in positions]
    )
    return BaselineBatch(input_ids=ids, attention_mask=attention, target_index=target_index)


# --------------------------------------------------------------------------- the position stream

EntropyFn = Callable[[list[list[int]]], list[torch.Tensor]]
"""Next-token entropies of token sequences under the proxy model: for a sequence s,
``out[j]`` is the entropy of p(· | s[:j+1]) (length len(s) − 1)."""


def _generator(seed: int, epoch: int, doc_index: int) -> torch.Generator:
    # A per-document generator (not the global RNG): the choice for a document depends on
    # nothing but (seed, epoch, index), so a resumed stream draws the same positions.
    digest = hashlib.sha256(f"rlp-positions:{seed}:{epoch}:{doc_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class PositionStream:
    """Positions for RLP, drawn from documents in corpus order, epoch after epoch.

    ``uniform``: per document, ``per_document`` distinct positions t uniform over
    [min_context, len − k]. ``entropy``: per document, a window of up to
    ``context_tokens + k`` tokens (uniform start) is scored by the proxy model, and
    ``per_document`` positions are drawn among those with next-token entropy above
    ``entropy_threshold`` (at least ``min_context`` tokens into the window); the entropy
    of a position is measured with the window as its context. Documents are scored in
    batches of ``proxy_batch``; positions drawn but not yet handed out are kept (and
    checkpointed) for the next call.
    """

    def __init__(
        self,
        documents: Callable[[], Iterator[str]],
        encode: Callable[[list[str]], list[list[int]]],
        *,
        seed: int,
        context_tokens: int,
        target_tokens: int,
        min_context: int,
        per_document: int = 1,
        bos_id: int | None = None,
        selection: str = "uniform",
        entropy_fn: EntropyFn | None = None,
        entropy_threshold: float = 0.0,
        proxy_batch: int = 16,
    ):
        if selection not in ("uniform", "entropy"):
            raise ValueError(f"unknown position selection {selection!r}")
        if selection == "entropy" and entropy_fn is None:
            raise ValueError("entropy selection needs a proxy model (entropy_fn)")
        self.documents = documents
        self.encode = encode
        self.seed = seed
        self.context_tokens = context_tokens
        self.k = target_tokens
        self.min_context = min_context
        self.per_document = per_document
        self.bos = [] if bos_id is None else [bos_id]
        self.selection = selection
        self.entropy_fn = entropy_fn
        self.threshold = entropy_threshold
        self.proxy_batch = proxy_batch if selection == "entropy" else 1
        self.epoch = 0
        self.doc_index = 0  # next record to read in this epoch
        self.pending: list[Position] = []
        # Selection statistics (entropy mode): candidates seen and kept, since the start.
        self.candidates = 0
        self.selected = 0
        self._iter: Iterator[str] | None = None

    @classmethod
    def from_config(
        cls,
        cfg: RLPConfig,
        documents: Callable[[], Iterator[str]],
        encode: Callable[[list[str]], list[list[int]]],
        *,
        seed: int,
        bos_id: int | None,
        entropy_fn: EntropyFn | None = None,
    ) -> PositionStream:
        """The stream ``stages.rlp`` describes; the proxy scores ``micro_batch_size`` documents at a time."""
        return cls(
            documents,
            encode,
            seed=seed,
            context_tokens=cfg.context_tokens,
            target_tokens=cfg.target_tokens,
            min_context=cfg.min_context_tokens,
            per_document=cfg.positions_per_document,
            bos_id=bos_id,
            selection=cfg.position_selection,
            entropy_fn=entropy_fn,
            entropy_threshold=cfg.entropy_threshold,
            proxy_batch=cfg.micro_batch_size,
        )

    # ---- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "doc_index": self.doc_index,
            "pending": [asdict(p) for p in self.pending],
            "candidates": self.candidates,
            "selected": self.selected,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.doc_index = int(state["doc_index"])
        self.pending = [
            Position(p["doc_index"], p["t"], tuple(p["context"]), tuple(p["target"]))
            for p in state["pending"]
        ]
        self.candidates = int(state.get("candidates", 0))
        self.selected = int(state.get("selected", 0))
        self._iter = None  # reopened and fast-forwarded to doc_index on the next read

    # ---- reading
    def _next_texts(self, n: int) -> list[tuple[int, str]]:
        """Up to n (index, text) of the current epoch; [] at its end."""
        if self._iter is None:
            self._iter = self.documents()
            for _ in range(self.doc_index):  # fast-forward after a resume (no tokenizing)
                if next(self._iter, None) is None:
                    break
        out = []
        for _ in range(n):
            text = next(self._iter, None)
            if text is None:
                break
            out.append((self.doc_index, text))
            self.doc_index += 1
        return out

    def _context(self, tokens: Sequence[int], t: int) -> tuple[int, ...]:
        start = max(0, t - self.context_tokens)
        # BOS marks the document start, as after the end-of-text separator in pretraining.
        head = self.bos if start == 0 else []
        return (*head, *tokens[start:t])

    def _position(self, doc_index: int, tokens: Sequence[int], t: int) -> Position:
        return Position(doc_index, t, self._context(tokens, t), tuple(tokens[t : t + self.k]))

    def _draw(self, candidates: list[int], gen: torch.Generator) -> list[int]:
        order = torch.randperm(len(candidates), generator=gen)[: self.per_document]
        return sorted(candidates[i] for i in order.tolist())

    def _from_documents(self, docs: list[tuple[int, str]]) -> list[Position]:
        token_lists = self.encode([text for _, text in docs])
        if self.selection == "uniform":
            out = []
            for (index, _), tokens in zip(docs, token_lists, strict=True):
                candidates = list(range(self.min_context, len(tokens) - self.k + 1))
                gen = _generator(self.seed, self.epoch, index)
                out += [self._position(index, tokens, t) for t in self._draw(candidates, gen)]
            return out
        windows, starts, gens = [], [], []
        for (index, _), tokens in zip(docs, token_lists, strict=True):
            gen = _generator(self.seed, self.epoch, index)
            width = self.context_tokens + self.k
            last_start = max(len(tokens) - width, 0)
            start = int(torch.randint(0, last_start + 1, (1,), generator=gen)) if last_start else 0
            head = self.bos if start == 0 else []
            windows.append([*head, *tokens[start : start + width]])
            starts.append((start, len(head)))
            gens.append(gen)
        assert self.entropy_fn is not None
        entropies = self.entropy_fn(windows) if windows else []
        out = []
        for (index, _), tokens, (start, offset), window, ent, gen in zip(
            docs, token_lists, starts, windows, entropies, gens, strict=True
        ):
            end = start + len(window) - offset  # one past the window's last document token
            candidates = []
            for t in range(start + self.min_context, end - self.k + 1):
                # ent[j] is the entropy of predicting window[j + 1]; token t sits at t - start + offset.
                if float(ent[t - start + offset - 1]) > self.threshold:
                    candidates.append(t)
            self.candidates += max(end - self.k + 1 - (start + self.min_context), 0)
            self.selected += len(candidates)
            out += [self._position(index, tokens, t) for t in self._draw(candidates, gen)]
        return out

    def take(self, n: int) -> list[Position]:
        """The next n positions of the stream (wrapping to a new epoch at the corpus end)."""
        empty_epochs = 0
        found_this_epoch = bool(self.pending)
        while len(self.pending) < n:
            docs = self._next_texts(self.proxy_batch)
            if not docs:
                if not found_this_epoch:
                    empty_epochs += 1
                    if empty_epochs >= 2 or self.doc_index == 0:
                        raise ValueError(
                            "the RLP corpus yields no usable position: documents are shorter than "
                            "min_context_tokens + target_tokens, or (entropy selection) no token "
                            "is above entropy_threshold"
                        )
                self.epoch += 1
                self.doc_index = 0
                self._iter = None
                found_this_epoch = False
                continue
            drawn = self._from_documents(docs)
            found_this_epoch = found_this_epoch or bool(drawn)
            self.pending += drawn
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def proxy_entropy_fn(
    model: torch.nn.Module,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    passes: PassSettings | None = None,
) -> EntropyFn:
    """An :data:`EntropyFn` running ``model`` (frozen, no grad) in right-padded batches of at
    most ``batch_size`` rows and ``passes.tokens_per_micro_batch`` tokens."""
    from slingshot.train.logprobs import batched_token_logprobs

    @torch.no_grad()
    def entropies(sequences: list[list[int]]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            ids, attention = _right_pad(chunk, pad_id)
            ids, attention = ids.to(device), attention.to(device)
            _, entropy = batched_token_logprobs(model, ids, attention, with_entropy=True, passes=passes)
            assert entropy is not None
            out += [entropy[i, : len(seq) - 1].cpu() for i, seq in enumerate(chunk)]
        return out

    return entropies
