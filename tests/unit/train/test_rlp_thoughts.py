"""RLP thoughts as the model has seen them (SPEC §7): the template, what ends a thought, what
becomes of an unclosed one, the spans positions avoid, and the gain of a correct inline
thought on a model warm-started on inline thoughts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stages import tiny_model_dir

from slingshot.data.chat import stop_token_ids, turn_markers
from slingshot.data.config import InlineThoughts, ThoughtTemplate
from slingshot.data.tokenizer import load_tokenizer
from slingshot.rollout import Rollout
from slingshot.train.rlp_batch import (
    Position,
    PositionStream,
    SpanMarkers,
    ThoughtFormat,
    build_thought_batch,
    excluded_token_mask,
    span_filter,
)
from slingshot.train.rlp_scoring import thought_rewards

EOS, OPEN, CLOSE, AFTER, PAD = 1, 5, 6, 7, 0
FMT = ThoughtFormat((OPEN,), CLOSE, after_ids=(AFTER,), end_ids=(EOS,), nested_id=OPEN)


def _hand_groups() -> tuple[list[Position], list[list[Rollout]]]:
    """Two positions x G=4: closed, capped at 3 tokens, stopped by EOS or by a nested <think>."""
    p0 = Position(doc_index=0, t=2, context=(EOS, 10, 11), target=(13,))
    p1 = Position(doc_index=1, t=1, context=(EOS, 20), target=(22,))
    q0, q1 = [EOS, 10, 11, OPEN], [EOS, 20, OPEN]
    return [p0, p1], [
        [
            Rollout(q0, [30, CLOSE], finished=True),  # a: closed
            Rollout(q0, [31, 32, 33], finished=False),  # b: capped
            Rollout(q0, [34, EOS], finished=True),  # c: ran into end of text
            Rollout(q0, [37, 38, CLOSE], finished=True),  # g: closed
        ],
        [
            Rollout(q1, [CLOSE], finished=True),  # d: closed, empty
            Rollout(q1, [35, OPEN], finished=True),  # e: nested <think>
            Rollout(q1, [36, CLOSE], finished=True),  # f: closed
            Rollout(q1, [39, 39, 39], finished=False),  # h: capped
        ],
    ]


def _masked(batch) -> list[list[int]]:
    """The tokens the thought mask marks as actions, per row (logp column j scores token j+1)."""
    n, width = batch.thought_mask.shape
    return [
        [int(batch.input_ids[i, j + 1]) for j in range(width) if batch.thought_mask[i, j]] for i in range(n)
    ]


def _rewards(batch):
    # Hand S_pred per thought (a b c g | d e f h) and S_ema per position: gains 1 0 -1 2 | .5 -3 -.5 -8.
    s_pred = torch.tensor([[-1.0], [-2.0], [-3.0], [0.0], [-0.5], [-4.0], [-1.5], [-9.0]])
    return thought_rewards(s_pred, torch.tensor([[-2.0], [-1.0]]), batch)


def test_unclosed_thoughts_get_the_configured_treatment_by_hand():
    positions, rollouts = _hand_groups()
    batch = build_thought_batch(positions, rollouts, FMT, None, PAD, unclosed="exclude")
    rows = [
        [int(x) for x, m in zip(r, a, strict=True) if m]
        for r, a in zip(batch.input_ids, batch.attention_mask, strict=True)
    ]
    assert rows[0] == [EOS, 10, 11, OPEN, 30, CLOSE, AFTER, 13]  # context open c close after target
    assert rows[2] == [EOS, 10, 11, OPEN, 34, CLOSE, AFTER, 13]  # the EOS is not part of the thought
    assert rows[5] == [EOS, 20, OPEN, 35, CLOSE, AFTER, 22]  # nor the nested <think>
    assert _masked(batch) == [[30, CLOSE], [], [], [37, 38, CLOSE], [CLOSE], [], [36, CLOSE], []]
    assert [int(batch.input_ids[i, batch.target_index[i, 0] + 1]) for i in range(8)] == [13] * 4 + [22] * 4
    assert batch.closed.tolist() == [True, False, False, True, True, False, True, False]
    assert batch.ended.tolist() == [False, False, True, False, False, True, False, False]
    assert batch.valid.tolist() == batch.closed.tolist()
    scored = _rewards(batch)
    # Group 0 is {a, g}: mean 1.5, x 2/(2-1); group 1 is {d, f}: mean 0, x 2.
    assert scored.advantages.tolist() == [-1.0, 0.0, 0.0, 1.0, 1.0, 0.0, -1.0, 0.0]
    metrics = scored.metrics(batch)
    assert metrics["thought/unclosed_frac"] == 0.5 and metrics["thought/excluded_frac"] == 0.5
    assert metrics["thought/capped_frac"] == 0.25 and metrics["thought/ended_frac"] == 0.25
    assert metrics["reward_mean"] == 0.75 and metrics["gain_positive_frac"] == 0.75  # valid: 1 2 .5 -.5

    closed = build_thought_batch(positions, rollouts, FMT, None, PAD, unclosed="close")
    assert _masked(closed) == [
        [30, CLOSE],
        [31, 32, 33],
        [34],
        [37, 38, CLOSE],
        [CLOSE],
        [35],
        [36, CLOSE],
        [39] * 3,
    ]
    assert torch.equal(closed.input_ids, batch.input_ids) and closed.valid.all()
    # All 4 count: group 0 mean 0.5, group 1 mean -2.75, x 4/3.
    torch.testing.assert_close(
        _rewards(closed).advantages, torch.tensor([2 / 3, -2 / 3, -2.0, 2.0, 13 / 3, -1 / 3, 3.0, -7.0])
    )

    zeroed = build_thought_batch(positions, rollouts, FMT, None, PAD, unclosed="zero_reward")
    scored = _rewards(zeroed)
    assert scored.rewards.tolist() == [[1.0, 0.0, 0.0, 2.0], [0.5, 0.0, -0.5, 0.0]]
    torch.testing.assert_close(
        scored.advantages, torch.tensor([1 / 3, -1.0, -1.0, 5 / 3, 2 / 3, 0.0, -2 / 3, 0.0])
    )


def test_thoughts_stop_at_close_end_of_text_or_a_nested_open(small_data):
    tok = load_tokenizer(small_data["outputs"]["tokenizer_dir"])
    vocab = tok.get_vocab()
    fmt = ThoughtFormat.of(tok, ThoughtTemplate(after="\n"), stop_token_ids(tok))
    # The rollout stops on </think>, on <|endoftext|> (the tiny template's end of turn too), on <think>.
    assert fmt.stop_ids == [vocab["</think>"], vocab["<|endoftext|>"], vocab["<think>"]]
    assert fmt.open_ids == (vocab["<think>"],) and fmt.after_ids == tuple(tok("\n")["input_ids"])
    with pytest.raises(ValueError, match="thought_template.close"):
        ThoughtFormat.of(tok, ThoughtTemplate(close="</think>\n\n"), [])


def test_drawn_positions_avoid_think_boxed_and_user_spans():
    pieces = ["<|user|>", "\n", "Q", "?", "\n", "<|assistant|>", "\n", "<think>", "\n", "a", "\n", "</think>"]
    pieces += ["\n", "\\", "boxed", "{", "4", "{", "}", "}", " ok"]
    markers = SpanMarkers(user_open="<|user|>\n", assistant_open="\n<|assistant|>\n")
    mask = excluded_token_mask(pieces, markers, ["think", "boxed", "user"])
    # user turn through the assistant header: 0-6; think block 7-11 and the "\n" after it; \boxed{4{}}
    # 13-19 (nested brace).
    assert [i for i, m in enumerate(mask) if not m] == [20]
    assert [i for i, m in enumerate(excluded_token_mask(pieces, markers, ["boxed"])) if not m] == list(
        range(13)
    ) + [20]
    assert not any(excluded_token_mask(pieces, markers, []))
    # The stream draws only outside the spans (here ids >= 500), deterministically and resumably.
    docs = [[100 + i, 500, 501, 102 + i, 103, 502, 104, 105, 106 + i, 503] for i in range(6)]

    def stream() -> PositionStream:
        return PositionStream(
            lambda: iter([str(i) for i in range(len(docs))]),
            lambda texts: [docs[int(t)] for t in texts],
            seed=3, context_tokens=4, target_tokens=1, min_context=1, per_document=3,
            excluded=lambda tokens: [t >= 500 for t in tokens],
        )  # fmt: skip

    reference = stream()
    expected = [reference.take(4) for _ in range(5)]
    assert all(docs[p.doc_index][p.t] < 500 for batch in expected for p in batch)
    assert {p.t for batch in expected for p in batch} == {3, 4, 6, 7, 8}
    resumed = stream()
    got = [resumed.take(4), resumed.take(4)]
    state = json.loads(json.dumps(resumed.state_dict()))
    resumed = stream()
    resumed.load_state_dict(state)
    assert got + [resumed.take(4) for _ in range(3)] == expected


def test_span_filter_on_a_real_chat_document(small_data):
    tok = load_tokenizer(small_data["outputs"]["tokenizer_dir"])
    markers = SpanMarkers(*("<think>", "</think>"), *turn_markers(tok))
    assert (markers.user_open, markers.assistant_open) == ("<|user|>\n", "\n<|assistant|>\n")
    text = "Ann has 3.\n<|user|>\nCalculate 2 + 2.\n<|assistant|>\n<think>\n2 + 2\n= 4\n</think>\n\\boxed{4} Yes."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    excluded = span_filter(tok, markers, ["think", "boxed", "user"])(ids)
    kept = "".join(tok.decode([i]) for i, out in zip(ids, excluded, strict=True) if not out)
    # Kept: the text before the turn and the tail.
    assert kept == "Ann has 3.\n Yes."


def _warm_start(small_data, out: Path, steps: int = 300) -> Path:
    """A tiny model trained ``steps`` next-token steps on the reasoning records written as
    statements, half of whose answers carry the teacher's thought inline (``data.inline_thoughts``)."""
    from slingshot.data.packing import tokenize_documents
    from slingshot.data.synthetic import reasoning_records
    from slingshot.data.tasks import load_entries
    from slingshot.data.teacher import ProceduralTeacher
    from slingshot.models.hf import load_model_and_tokenizer, save_model_dir

    model, tok = load_model_and_tokenizer(
        tiny_model_dir(out / "init", Path(small_data["outputs"]["tokenizer_dir"]))
    )
    inline = InlineThoughts(statement_fraction=1.0, thought_fraction=0.5)
    entries = load_entries(small_data["outputs"]["tasks_train"])
    texts = [r["text"] for r in reasoning_records(entries, ProceduralTeacher(), 1, inline)]
    ids = [t for doc in tokenize_documents(tok, texts) for t in (tok.eos_token_id, *doc)]
    seqs = torch.tensor(ids[: len(ids) // 64 * 64]).view(-1, 64)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = seqs[torch.randint(0, len(seqs), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_model_dir(model, tok, out / "warm")


def test_a_correct_inline_thought_gains_on_a_warm_started_model(tmp_path, small_data):
    """On held-out problems, ``question\\n <think> c </think> answer``: the teacher's thought c
    (which ends "answer: X") raises log p(first answer token) over the no-thought baseline, and
    an empty thought does not; the model's own sampled thoughts stop at </think>, end of text or
    a nested <think>, and the unclosed ones are excluded."""
    from slingshot.data.tasks import load_entries
    from slingshot.data.teacher import ProceduralTeacher
    from slingshot.models.hf import load_model_and_tokenizer
    from slingshot.train.rlp_scoring import score_baseline, score_thoughts

    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer(_warm_start(small_data, tmp_path))
    model.eval()
    fmt = ThoughtFormat.of(tok, ThoughtTemplate(), stop_token_ids(tok))
    teacher = ProceduralTeacher()

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    positions, rollouts = [], []
    for entry in load_entries(small_data["outputs"]["tasks_test"])[::5]:  # 32 held-out problems
        trace = teacher.solve(entry)
        context = (tok.eos_token_id, *encode(entry["question"] + "\n"))
        position = Position(0, len(context) - 1, context, (encode(trace.answer)[0],))
        prompt = [*context, *fmt.open_ids]
        positions.append(position)
        rollouts.append(
            [
                Rollout(prompt, [*encode(trace.thought), fmt.close_id], True),
                Rollout(prompt, [fmt.close_id], True),
            ]
        )
    batch = build_thought_batch(positions, rollouts, fmt, None, tok.pad_token_id, unclosed="exclude")
    cpu = torch.device("cpu")
    scores = score_thoughts(model, batch, 64, cpu)
    rewards = thought_rewards(
        scores.s_pred, score_baseline(model, positions, tok.pad_token_id, 64, cpu), batch
    ).rewards
    correct, empty = rewards[:, 0], rewards[:, 1]
    print(f"gain of the correct thought {correct.mean():+.3f} ({(correct > 0).float().mean():.0%} > 0), "
          f"of the empty one {empty.mean():+.3f}, correct > empty {(correct > empty).float().mean():.0%}")  # fmt: skip
    # Measured (300 steps): +1.573 (100% > 0), empty +0.285, correct > empty 88% (28 of 32). The empty
    # thought's small gain is the baseline's: after "question\\n" half the statements seen go
    # on with <think>, so log p(answer | no thought) pays for that mass; the thought's content
    # is what the correct one adds.
    assert correct.mean() > 1.0 and (correct > 0).float().mean() > 0.9
    assert (correct - empty).mean() > 1.0 and (correct > empty).float().mean() > 0.8

    # Its own thoughts, sampled with the stage's stops (</think>, end of text, a nested <think>):
    # every one ends at a stop or at the cap and none runs past one. 300 steps do not teach it
    # to write good ones: of 64 (2 per problem), measured 17 closed, 10 ran into <|endoftext|> and
    # 11 opened a nested <think> (before, both ran on into a new document or a nested thought).
    from slingshot.rollout.hf import HFRollout

    prompts = [rollout[0].prompt_ids for rollout in rollouts]
    sampled = HFRollout(model, tok.pad_token_id, fmt.stop_ids).generate(prompts, 2, 48, 0.7, seed=0)
    stops = set(fmt.stop_ids)
    flat = [r for group in sampled for r in group]
    assert all(not stops & set(r.completion_ids[:-1]) for r in flat)
    assert all(r.completion_ids[-1] in stops if r.finished else len(r.completion_ids) == 48 for r in flat)
    ends = [r.completion_ids[-1] for r in flat if r.finished]
    print(
        "closed",
        ends.count(fmt.close_id),
        "EOS",
        ends.count(tok.eos_token_id),
        "nested",
        ends.count(fmt.nested_id),
    )
    assert ends.count(tok.eos_token_id) > 0 and ends.count(fmt.nested_id) > 0
    own = build_thought_batch(positions, sampled, fmt, None, tok.pad_token_id, unclosed="exclude")
    assert int(own.ended.sum()) == ends.count(tok.eos_token_id) + ends.count(fmt.nested_id)
    assert torch.equal(own.valid, own.closed) and not own.thought_mask[~own.closed].any()


def test_a_stage_step_logs_what_became_of_its_thoughts(tmp_path, small_data):
    """Real steps with the defaults (exclude unclosed thoughts, skip think / boxed / user spans).
    The chat-format reasoning corpus (user turn, think block, box) has no position left, which
    the stage says naming the key; on general text the fractions of closed, capped and ended
    thoughts account for all of them, and the excluded ones are exactly the unclosed ones."""
    from stages import make_ctx, pipeline_config

    from slingshot.stages import rlp
    from slingshot.tracking import Tracker

    class Recording(Tracker):
        def __init__(self) -> None:
            super().__init__(None, None)
            self.rows: dict[int, dict[str, float]] = {}

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            self.rows[step] = dict(metrics)

    model = tiny_model_dir(tmp_path / "m", Path(small_data["outputs"]["tokenizer_dir"]))
    rlp_cfg = {"steps": 1, "positions_per_step": 2, "group_size": 2, "log_every": 1, "thought_tokens": 4}
    rlp_cfg |= {"context_tokens": 24, "min_context_tokens": 4, "micro_batch_size": 4}

    def run(corpus: str, tracker: Tracker | None = None) -> None:
        cfg = pipeline_config(tmp_path / corpus, {"stages": {"rlp": {**rlp_cfg, "corpus": corpus}}})
        rlp.run(
            make_ctx(
                tmp_path / corpus, "rlp", cfg, {"data": small_data}, init_model=str(model), tracker=tracker
            )
        )

    with pytest.raises(ValueError, match="every position lies in stages.rlp.exclude_spans"):
        run("reasoning")
    tracker = Recording()
    run("general", tracker)
    metrics = tracker.rows[1]
    closed, capped, ended = (
        metrics[k] for k in ("thought_closed_frac", "thought/capped_frac", "thought/ended_frac")
    )
    assert closed + capped + ended == pytest.approx(1.0)
    assert metrics["thought/excluded_frac"] == metrics["thought/unclosed_frac"] == pytest.approx(1 - closed)
