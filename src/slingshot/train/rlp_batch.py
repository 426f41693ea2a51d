"""RLP batch construction (SPEC §2, §7): which text positions to train on, and the padded
tensors the stage scores and updates on.

A *position* is a place t in a document: its context x_<t (at most ``context_tokens``
tokens, preceded by the tokenizer's BOS when the document start is in view, which is
what pretraining saw) and its target x_t..x_{t+k-1}. Positions whose target lies in an
excluded span (``stages.rlp.exclude_spans``: an existing think block, a ``\\boxed{...}``
answer, the user turn of a chat document; :func:`excluded_token_mask`) are never drawn:
a thought there is one the model has never seen.

The thought is written in the recipe's :class:`~slingshot.data.config.ThoughtTemplate`
(``open``, ``close``, ``after``, as the model saw thoughts in its training data). The
stage samples G thoughts per position from the prompt ``context + open``, stopping at
``close``, at end of text (EOS / end of turn) or at a nested ``open``
(:class:`ThoughtFormat`), and builds, per thought, the sequence

    context  open  c_1 .. c_n  close  after  x_t .. x_{t+k-1}

A sampled ``close`` IS an action (the choice to stop thinking) and is trained like every
other thought token; ``after`` is never sampled, so it is not an action. A thought that
did not close (length cap, end of text, or a nested ``open``) is *unclosed*, and
``unclosed`` says what becomes of it: ``exclude`` (default in the config) scores it
nowhere: no action, not in its group's baseline or advantage (``valid`` False);
``close`` appends ``close`` (not an action; a terminal end-of-text / nested-open token
is dropped first, so it is not scored as part of the thought) and treats it as closed;
``zero_reward`` does the same but its reward is 0 (it gained nothing).

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
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from slingshot.rollout.base import Rollout

if TYPE_CHECKING:
    from slingshot.config import RLPConfig
    from slingshot.data.config import ThoughtTemplate
    from slingshot.train.logprobs import PassSettings

Unclosed = Literal["exclude", "close", "zero_reward"]


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
    thought_lengths: torch.Tensor  # [N] long: sampled tokens (incl. a sampled close or stop token)
    closed: torch.Tensor  # [N] bool: the thought ended with a sampled close
    ended: torch.Tensor  # [N] bool: unclosed, stopped by end of text or a nested open (else: the cap)
    valid: torch.Tensor  # [N] bool: counts in its group's baseline and advantage (False: excluded)
    zero_reward: torch.Tensor  # [N] bool: its reward is set to 0 (unclosed, ``zero_reward``)
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
            ended=self.ended[start:stop],
            valid=self.valid[start:stop],
            zero_reward=self.zero_reward[start:stop],
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


@dataclass(frozen=True)
class ThoughtFormat:
    """A :class:`~slingshot.data.config.ThoughtTemplate` in token ids, and what ends a thought.

    ``end_ids``: end of text (EOS, the chat template's end of turn): a thought that reaches
    one ran into a new document or turn, so it is unclosed. ``nested_id``: a sampled thought
    opening (the first token of ``open``) inside the thought also stops it, unclosed.
    """

    open_ids: tuple[int, ...]
    close_id: int
    after_ids: tuple[int, ...] = ()
    end_ids: tuple[int, ...] = ()
    nested_id: int | None = None

    @property
    def stop_ids(self) -> list[int]:
        """What the rollout stops on: close, end of text, a nested open."""
        nested = [] if self.nested_id is None else [self.nested_id]
        return list(dict.fromkeys([self.close_id, *self.end_ids, *nested]))

    @classmethod
    def of(cls, tokenizer: Any, template: ThoughtTemplate, end_ids: Sequence[int]) -> ThoughtFormat:
        """Encode ``template`` (no special tokens added); ``close`` must be one token."""

        def encode(text: str) -> tuple[int, ...]:
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

        close = encode(template.close)
        if len(close) != 1:
            raise ValueError(
                f"stages.rlp.thought_template.close: {template.close!r} is {len(close)} tokens of the "
                "model's tokenizer; it must be one token (generation stops on it)"
            )
        opening = encode(template.open)
        nested = opening[0] if opening and opening[0] != close[0] else None
        return cls(opening, close[0], encode(template.after), tuple(end_ids), nested)


def prompt_ids(position: Position, think_open: int | Sequence[int]) -> list[int]:
    """The generation prompt of a position: its context followed by the thought opening."""
    opening = [think_open] if isinstance(think_open, int) else list(think_open)
    return [*position.context, *opening]


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
    think_open: int | ThoughtFormat,
    think_close: int | None,
    pad_id: int,
    *,
    unclosed: Unclosed = "close",
) -> ThoughtBatch:
    """Sequences, thought mask and target index for ``rollouts[b][g]`` of ``positions[b]``.

    ``think_open``: a :class:`ThoughtFormat` (``think_close`` None), or the bare open/close
    ids of the plain ``<think>c</think>`` template with no end-of-text stops. ``unclosed``:
    what becomes of a thought that did not close (module docstring).

    Right padding keeps every real token at the position ids it had during generation
    (0..len-1) without passing position_ids, and causal attention never looks right.
    """
    if isinstance(think_open, ThoughtFormat):
        fmt = think_open
    else:
        if think_close is None:
            raise ValueError("think_close is needed with a bare think_open id")
        fmt = ThoughtFormat((think_open,), think_close)
    if len(positions) != len(rollouts) or not positions:
        raise ValueError(f"{len(positions)} positions but {len(rollouts)} rollout groups")
    group = len(rollouts[0])
    if any(len(r) != group for r in rollouts):
        raise ValueError("every position needs the same number of thoughts (G)")
    k = len(positions[0].target)
    if any(len(p.target) != k for p in positions):
        raise ValueError("every position needs the same number of target tokens (k)")
    stops = set(fmt.end_ids) | ({fmt.nested_id} - {None})
    rows: list[list[int]] = []
    # Per row: (first thought token, thought tokens that are actions, first target token).
    spans: list[tuple[int, int, int]] = []
    lengths, closed, ended, valid, zeroed = [], [], [], [], []
    for position, thoughts in zip(positions, rollouts, strict=True):
        prompt = prompt_ids(position, fmt.open_ids)
        for rollout in thoughts:
            if list(rollout.prompt_ids) != prompt:
                raise ValueError("a rollout's prompt is not its position's context + the thought opening")
            sampled = list(rollout.completion_ids)
            is_closed = bool(sampled) and sampled[-1] == fmt.close_id
            is_ended = not is_closed and bool(sampled) and sampled[-1] in stops
            if is_closed:
                thought, actions = sampled, len(sampled)
            else:
                # The end-of-text / nested-open token is not part of the thought: dropped.
                body = sampled[:-1] if is_ended else sampled
                thought = [*body, fmt.close_id]
                actions = 0 if unclosed == "exclude" else len(body)
            thought = [*thought, *fmt.after_ids]
            spans.append((len(prompt), actions, len(prompt) + len(thought)))
            rows.append([*prompt, *thought, *position.target])
            lengths.append(len(sampled))
            closed.append(is_closed)
            ended.append(is_ended)
            valid.append(is_closed or unclosed != "exclude")
            zeroed.append(not is_closed and unclosed == "zero_reward")
    ids, attention = _right_pad(rows, pad_id)
    thought_mask = torch.zeros((len(rows), ids.shape[1] - 1), dtype=torch.bool)
    target_index = torch.empty((len(rows), k), dtype=torch.long)
    for i, (first, n_actions, target_start) in enumerate(spans):
        thought_mask[i, first - 1 : first - 1 + n_actions] = True
        target_index[i] = torch.arange(target_start - 1, target_start - 1 + k)
    return ThoughtBatch(
        input_ids=ids,
        attention_mask=attention,
        thought_mask=thought_mask,
        target_index=target_index,
        thought_lengths=torch.tensor(lengths, dtype=torch.long),
        closed=torch.tensor(closed, dtype=torch.bool),
        ended=torch.tensor(ended, dtype=torch.bool),
        valid=torch.tensor(valid, dtype=torch.bool),
        zero_reward=torch.tensor(zeroed, dtype=torch.bool),
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

SpanKind = Literal["think", "boxed", "user"]
ExcludedFn = Callable[[Sequence[int]], list[bool]]
"""Per token of a document: True where the token lies in an excluded span."""

_BOXED = "\\boxed{"


@dataclass(frozen=True)
class SpanMarkers:
    """The text that opens and closes each excludable span.

    ``user_open`` / ``assistant_open``: what the chat template writes before a user message
    and after it up to the assistant's answer (:func:`slingshot.data.chat.turn_markers`);
    None where the tokenizer has no chat template (no user span then).
    """

    think_open: str = "<think>"
    think_close: str = "</think>"
    user_open: str | None = None
    assistant_open: str | None = None


def _until(text: str, start: int, closer: str) -> int:
    end = text.find(closer, start)
    return len(text) if end < 0 else end + len(closer)


def _brace_end(text: str, start: int) -> int:
    # ``start`` is just past ``\boxed{``: the span ends at its matching ``}`` (or the text end).
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def excluded_char_spans(text: str, markers: SpanMarkers, kinds: Sequence[SpanKind]) -> list[tuple[int, int]]:
    """[start, end) character spans of ``text`` inside the ``kinds`` of span, openers and closers
    included: ``think`` from ``<think>`` to the next ``</think>`` and one character on (so the
    token right after the block is in it too: a thought there would follow a thought, in a
    place the model has only seen a thought's continuation); ``boxed`` from ``\\boxed{`` to
    its matching brace; ``user`` from the user-turn opener to the end of the assistant header.
    An unclosed span runs to the end of the text."""
    spans: list[tuple[int, int]] = []

    def add(opener: str, find_end: Callable[[int], int]) -> None:
        for match in re.finditer(re.escape(opener), text):
            spans.append((match.start(), find_end(match.end())))

    if "think" in kinds:
        add(markers.think_open, lambda e: min(_until(text, e, markers.think_close) + 1, len(text)))
    if "boxed" in kinds:
        add(_BOXED, lambda e: _brace_end(text, e))
    if "user" in kinds and markers.user_open and markers.assistant_open:
        assistant = markers.assistant_open
        add(markers.user_open, lambda e: _until(text, e, assistant))
    return spans


def excluded_token_mask(pieces: Sequence[str], markers: SpanMarkers, kinds: Sequence[SpanKind]) -> list[bool]:
    """Per token (``pieces``: each token's text, in order): True where it overlaps an excluded span."""
    text = "".join(pieces)
    diff = [0] * (len(text) + 1)  # +1 at a span start, -1 at its end: a running count of open spans
    for start, end in excluded_char_spans(text, markers, kinds):
        diff[start] += 1
        diff[end] -= 1
    inside, running = [], 0
    for d in diff[:-1]:
        running += d
        inside.append(running > 0)
    out, pos = [], 0
    for piece in pieces:
        out.append(any(inside[pos : pos + len(piece)]))
        pos += len(piece)
    return out


def span_filter(tokenizer: Any, markers: SpanMarkers, kinds: Sequence[SpanKind]) -> ExcludedFn | None:
    """An :data:`ExcludedFn` over token ids of ``tokenizer`` (each id decoded alone, cached);
    None when no span is excluded."""
    if not kinds:
        return None
    cache: dict[int, str] = {}

    def piece(token: int) -> str:
        if token not in cache:
            # A byte-level piece of a multi-byte character decodes to U+FFFD: still one piece per
            # token, and every marker is ASCII, so the spans are found all the same.
            cache[token] = tokenizer.decode([token])
        return cache[token]

    return lambda tokens: excluded_token_mask([piece(t) for t in tokens], markers, kinds)


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
    of a position is measured with the window as its context. In both, a position whose
    target tokens touch an excluded span (``excluded``) is no candidate. Documents are scored in
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
        excluded: ExcludedFn | None = None,
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
        self.excluded = excluded
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
        excluded: ExcludedFn | None = None,
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
            excluded=excluded,
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

    def _allowed(self, tokens: Sequence[int]) -> Callable[[int], bool]:
        """Whether position t's targets x_t..x_{t+k-1} are outside every excluded span."""
        if self.excluded is None:
            return lambda t: True
        inside = self.excluded(tokens)
        return lambda t: not any(inside[t : t + self.k])

    def _from_documents(self, docs: list[tuple[int, str]]) -> list[Position]:
        token_lists = self.encode([text for _, text in docs])
        if self.selection == "uniform":
            out = []
            for (index, _), tokens in zip(docs, token_lists, strict=True):
                allowed = self._allowed(tokens)
                candidates = [t for t in range(self.min_context, len(tokens) - self.k + 1) if allowed(t)]
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
            allowed = self._allowed(tokens)
            in_spans = [t for t in range(start + self.min_context, end - self.k + 1) if allowed(t)]
            # ent[j] is the entropy of predicting window[j + 1]; token t sits at t - start + offset.
            candidates = [t for t in in_spans if float(ent[t - start + offset - 1]) > self.threshold]
            self.candidates += len(in_spans)
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
                            "min_context_tokens + target_tokens, every position lies in "
                            "stages.rlp.exclude_spans, or (entropy selection) no token is above "
                            "entropy_threshold"
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
