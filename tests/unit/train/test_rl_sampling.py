"""ProRL's group sampler: the prompt stream, scoring, dynamic sampling, validation, and the
reset bookkeeping (slingshot.train.rl_sampling), with a scripted rollout backend."""

from __future__ import annotations

import pytest
import torch

from slingshot.config import ProRLConfig
from slingshot.data.tasks import derive_seed
from slingshot.rollout import Rollout
from slingshot.train import rl_sampling
from slingshot.train.state import Counter

RIGHT = list("<think>2 + 3 = 5</think>\\boxed{5}")
WRONG = list("<think>2 + 3 = 6</think>\\boxed{6}")
SHORT = list("\\boxed{6}")  # wrong, and shorter
EOS = ""  # the stop token a finished rollout ends with (decodes to nothing here)


def test_overlong_penalty_ramps_over_the_last_tokens():
    assert rl_sampling.overlong_penalty(100, 128, 0) == 0.0
    assert rl_sampling.overlong_penalty(96, 128, 32) == 0.0
    assert rl_sampling.overlong_penalty(112, 128, 32) == pytest.approx(-0.5)
    assert rl_sampling.overlong_penalty(128, 128, 32) == -1.0
    assert rl_sampling.overlong_penalty(140, 128, 32) == -1.0
    assert rl_sampling.overlong_penalty(116, 128, 16) == pytest.approx(-0.25)  # (116 - 112) / 16


class _TextTokenizer:
    """Decodes a completion given as a list of one-character "ids" (no model needed)."""

    def decode(self, ids: list[str], skip_special_tokens: bool = False) -> str:
        return "".join(ids)


def test_rewards_truncated_is_zero_and_overlong_ramps():
    entry = {"family": "basic_arithmetic", "question": "Calculate 2 + 3.", "answer": "5", "math": True}
    right = list("<think>2 + 3 = 5</think>\\boxed{5}")
    wrong = list("<think>2 + 3 = 6</think>\\boxed{6}")
    rollouts = [
        Rollout([1], [*right, EOS], finished=True),
        Rollout([1], [*wrong, EOS], finished=True),
        Rollout([1], right, finished=False),  # cut by the length limit after a boxed answer
    ]
    cfg = ProRLConfig(phases=[{"name": "p", "steps": 1, "max_response_tokens": 64}])
    group = rl_sampling.score_group(entry, rollouts, _TextTokenizer(), cfg, max_tokens=64)
    assert group.rewards == [1.0, 0.0, 0.0] and group.correct == [True, False, False]
    ramp = cfg.model_copy(update={"overlong_penalty_tokens": 32})
    length = len(right) + 1  # 33 characters and the stop token: just past the ramp's start at 64 - 32
    group = rl_sampling.score_group(entry, rollouts, _TextTokenizer(), ramp, max_tokens=64)
    assert group.rewards[0] == pytest.approx(1.0 - (length - 32) / 32)


def test_prompt_stream_resumes_at_the_same_prompt():
    entries = [{"id": str(i)} for i in range(7)]
    a = rl_sampling.PromptStream(entries, seed=3)
    first = [e["id"] for e in a.take(10)]  # crosses an epoch boundary
    saved = a.state_dict()
    rest = [e["id"] for e in a.take(9)]
    b = rl_sampling.PromptStream(entries, seed=3)
    b.load_state_dict(saved)
    assert [e["id"] for e in b.take(9)] == rest
    assert sorted(first[:7]) == sorted(str(i) for i in range(7))  # an epoch is a permutation


def test_prompt_stream_refuses_another_task_set_and_an_empty_one():
    stream = rl_sampling.PromptStream([{"id": "0"}, {"id": "1"}], seed=0)
    with pytest.raises(ValueError, match="over 3 training prompts, this run has 2"):
        stream.load_state_dict({"epoch": 0, "position": 1, "size": 3})
    with pytest.raises(ValueError, match="task set is empty"):
        rl_sampling.PromptStream([], seed=0)


def test_plateau_bookkeeping_and_optimizer_reset():
    cfg = ProRLConfig(reference_reset={"plateau_evals": 2})
    book = Counter(best_val=float("-inf"), evals_since_best=0)
    assert not rl_sampling.track_validation(book, 0.3)  # improved
    assert rl_sampling.track_validation(book, 0.3) and not rl_sampling.plateaued(cfg, book)
    assert rl_sampling.track_validation(book, 0.2) and rl_sampling.plateaued(cfg, book)
    policy, reference = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(policy.parameters())
    policy(torch.ones(1, 2)).sum().backward()
    opt.step()
    rl_sampling.reset_reference(policy, reference, opt, reset_optimizer=True)
    assert torch.equal(policy.weight, reference.weight) and len(opt.state) == 0


def test_validation_prompts_cover_every_family_in_turn():
    entries = [{"id": f"{family}/{i}", "family": family} for family in ("b", "a") for i in (2, 0, 1)]
    entries += [{"id": "c/0", "family": "c"}]
    chosen = [e["id"] for e in rl_sampling.validation_prompts(entries, 5)]
    assert chosen == ["a/0", "b/0", "c/0", "a/1", "b/1"]
    assert len(rl_sampling.validation_prompts(entries, 100)) == 7


def test_entropy_controller_from_config_pins_eps_high_when_disabled():
    on = rl_sampling.entropy_controller(ProRLConfig(eps_high=0.3))
    assert (on.eps_high_min, on.eps_high_max, on.eps_high) == (0.2, 0.5, 0.3)
    assert on.update(0.0) == pytest.approx(0.31)  # below the band: ε_high up by step_size
    off = rl_sampling.entropy_controller(ProRLConfig(eps_high=0.3, entropy_control={"enabled": False}))
    assert (off.eps_high_min, off.eps_high_max) == (0.3, 0.3)
    assert off.update(0.0) == 0.3


def test_entropy_controller_from_config_can_follow_a_relative_band():
    cfg = ProRLConfig(entropy_control={"signal": "distinct_answers", "relative": True, "target_low": 0.9})
    controller = rl_sampling.entropy_controller(cfg)
    assert controller.relative and controller.update(5.0) == 0.4  # the reference: 5 answers a group
    assert controller.update(4.0) == pytest.approx(0.41)  # 80% of the start, below 90%: up


# --------------------------------------------------------------------------- the sampler


class _ScriptedBackend:
    """Answers prompt [i] with ``script[i]``: (completion, finished) per sample; records seeds."""

    def __init__(self, script: dict[int, list[tuple[list[str], bool]]]):
        self.script = script
        self.seeds: list[int | None] = []

    def generate(self, prompts, n, max_new_tokens, temperature, top_p=1.0, seed=None):
        self.seeds.append(seed)
        return [[Rollout(p, [*c, EOS] if f else c, f) for c, f in self.script[p[0]][:n]] for p in prompts]

    def sync_weights(self, model):
        pass


class _InOrder:
    """A prompt stream without the shuffle: entries in order."""

    def __init__(self, entries: list[dict]):
        self.entries, self.position = entries, 0

    def take(self, n: int) -> list[dict]:
        out = self.entries[self.position : self.position + n]
        self.position += n
        return out


def _entry(i: int, family: str = "fam") -> dict:
    return {"id": str(i), "family": family, "answer": "5", "math": True}


def _sampler(script, **cfg) -> rl_sampling.GroupSampler:
    config = ProRLConfig(n_samples=2, phases=[{"name": "p", "steps": 1, "max_response_tokens": 64}], **cfg)
    sampler = rl_sampling.GroupSampler(_ScriptedBackend(script), _TextTokenizer(), config, 64, seed=11)
    sampler.prompt_ids = lambda entry: [int(entry["id"])]  # no chat template needed
    return sampler


def test_collect_keeps_only_groups_with_a_signal_and_counts_what_it_saw():
    script = {
        0: [(RIGHT, True), (RIGHT, True)],  # all right: no signal
        1: [(RIGHT, True), (SHORT, True)],
        2: [(WRONG, True), (RIGHT, False)],  # truncated: reward 0, so all wrong
        3: [(SHORT, True), (RIGHT, True)],
        4: [(RIGHT, True), (WRONG, True)],  # never drawn: the batch is full after two calls
    }
    sampler = _sampler(script, batch_prompts=2, mini_batch_prompts=1, max_gen_batches=3)
    kept, stats = sampler.collect(_InOrder([_entry(i) for i in range(5)]), step=7)
    assert [g.entry["id"] for g in kept] == ["1", "3"]
    assert [g.rewards for g in kept] == [[1.0, 0.0], [0.0, 1.0]]
    assert [g.answers for g in kept] == [["5", "6"], ["6", "5"]]
    # One seed per prompt, from (step, generation batch, index in the batch).
    assert sampler.backend.seeds == [
        [derive_seed(11, "rollout", 7, g, i) for i in range(2)] for g in range(2)
    ]
    lengths = [34, 34, 34, 10, 34, 33, 10, 34]  # finished responses end with the stop token
    assert stats.pop("time_generate_s") >= 0 and stats.pop("time_score_s") >= 0
    assert stats == {
        "reward_mean": 4 / 8,
        "pass_rate": 4 / 8,
        "groups_kept_frac": 2 / 4,
        "groups_trained": 2.0,
        "distinct_answers": 2.0,  # 5 and 6 in each kept group
        "gen_batches": 2.0,
        "response_length": sum(lengths) / 8,
        "response_length_max": 34.0,
        "truncated_frac": 1 / 8,
        "tokens_generated": float(8 + sum(lengths)),
        "weight_version": 0.0,  # the scripted backend's rollouts: no push before them
    }


def test_train_batch_is_group_major_with_group_normalised_advantages():
    groups = [
        rl_sampling.ScoredGroup(
            _entry(0), [Rollout([1], [2, 3], True), Rollout([1], [4], True)], [1.0, 0.0], []
        ),
        rl_sampling.ScoredGroup(
            _entry(1), [Rollout([5], [6], True), Rollout([5], [7], True)], [0.0, 1.0], []
        ),
    ]
    cfg = ProRLConfig()
    train = rl_sampling.make_train_batch(groups, cfg, pad_token_id=0)
    assert train.batch.input_ids.tolist() == [[1, 2, 3], [1, 4, 0], [5, 6, 0], [5, 7, 0]]
    assert train.rewards.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    # (r - mean) / (unbiased std + eps): ±0.5 / (0.7071 + 1e-6) per group.
    expected = 0.5 / (2**-0.5 + 1e-6)
    assert train.advantages.tolist() == pytest.approx([expected, -expected, -expected, expected])
    dr_grpo = rl_sampling.make_train_batch(groups, cfg.model_copy(update={"normalize_std": False}), 0)
    assert dr_grpo.advantages.tolist() == [0.5, -0.5, -0.5, 0.5]


def test_collect_stops_after_max_gen_batches_with_what_it_has():
    script = {i: [(RIGHT, True), (RIGHT, True)] for i in range(4)}
    sampler = _sampler(script, batch_prompts=2, mini_batch_prompts=1, max_gen_batches=2)
    kept, stats = sampler.collect(_InOrder([_entry(i) for i in range(4)]), step=1)
    assert kept == [] and stats["gen_batches"] == 2.0 and stats["groups_kept_frac"] == 0.0


def test_validate_is_pass_at_1_per_family_with_one_fixed_seed():
    script = {
        0: [(RIGHT, True), (RIGHT, True)],
        1: [(RIGHT, True), (WRONG, True)],
        2: [(SHORT, True), (WRONG, True)],
    }
    sampler = _sampler(script, val_samples=2)
    entries = [_entry(0, "a"), _entry(1, "a"), _entry(2, "b")]
    first = sampler.validate(entries)
    assert first == {
        "val/pass_at_1": 3 / 6,
        "val/response_length": (5 * 34 + 10) / 6,  # with the stop token
        "val/pass_at_1/a": 3 / 4,
        "val/pass_at_1/b": 0.0,
    }
    assert sampler.validate(entries) == first
    assert sampler.backend.seeds == [[derive_seed(11, "validation", i) for i in range(3)]] * 2
    assert sampler.validate([]) == {}


def test_over_provisioning_draws_more_prompts_per_generation_batch():
    script = {
        0: [(RIGHT, True), (RIGHT, True)],  # no signal
        1: [(RIGHT, True), (SHORT, True)],
        2: [(SHORT, True), (RIGHT, True)],
        3: [(RIGHT, True), (WRONG, True)],
    }
    # ceil(1.5 x 2) = 3 prompts a batch: 0, 1, 2 fill the batch in one generation batch ...
    sampler = _sampler(script, batch_prompts=2, mini_batch_prompts=1, over_provision=1.5)
    kept, stats = sampler.collect(_InOrder([_entry(i) for i in range(4)]), step=0)
    assert [g.entry["id"] for g in kept] == ["1", "2"] and stats["gen_batches"] == 1.0
    # ... where 2 a batch (the default, 1.0) takes two.
    sampler = _sampler(script, batch_prompts=2, mini_batch_prompts=1)
    kept, stats = sampler.collect(_InOrder([_entry(i) for i in range(4)]), step=0)
    assert [g.entry["id"] for g in kept] == ["1", "2"] and stats["gen_batches"] == 2.0


def test_train_batch_with_reinforce_pp_baseline_advantages():
    groups = [
        rl_sampling.ScoredGroup(
            _entry(0), [Rollout([1], [2], True), Rollout([1], [3], True)], [0.0, 1.0], []
        ),
        rl_sampling.ScoredGroup(
            _entry(1), [Rollout([5], [6], True), Rollout([5], [7], True)], [1.0, 3.0], []
        ),
    ]
    cfg = ProRLConfig(advantage_estimator="reinforce_pp_baseline", binary_reward=False)
    train = rl_sampling.make_train_batch(groups, cfg, pad_token_id=0)
    # A = [-0.5, 0.5, -1, 1]: batch mean 0, biased std sqrt(0.625).
    std = 0.625**0.5 + 1e-6
    assert train.advantages.tolist() == pytest.approx([-0.5 / std, 0.5 / std, -1 / std, 1 / std])
