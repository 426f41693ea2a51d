"""The RL stages' one policy-update routine (slingshot.train.policy_update): the optimizer-step
loop with its post-step hook, the clipped loss with its KL term, and both stages' entry points."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from tiny_hf import tiny_llama

from slingshot.config import ProRLConfig, RLPConfig
from slingshot.rollout import Rollout
from slingshot.train.logprobs import PassSettings
from slingshot.train.policy_update import (
    UpdateSettings,
    clipped_loss,
    ema_teacher_hook,
    policy_update,
    update_on_groups,
    update_on_thoughts,
)
from slingshot.train.rl_batch import build_rl_batch
from slingshot.train.rl_sampling import TrainBatch
from slingshot.train.rlp_batch import Position, build_thought_batch
from slingshot.train.rlp_scoring import score_thoughts

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- settings


def test_settings_from_each_stage_config():
    prorl = UpdateSettings.from_config(
        ProRLConfig(n_samples=4, batch_prompts=8, mini_batch_prompts=2, kl_coef=0.01, top_entropy_q=0.2)
    )
    assert (prorl.minibatch_rows, prorl.kl_coef, prorl.top_entropy_q, prorl.epochs) == (8, 0.01, 0.2, 1)
    assert (prorl.eps_low, prorl.eps_high, prorl.loss_agg, prorl.grad_clip) == (0.2, 0.4, "token-mean", 1.0)
    # A fixed number of rows per step: a short batch (fewer kept groups) gets fewer steps.
    assert prorl.minibatch_bounds(20) == [(0, 8), (8, 16), (16, 24)]

    rlp = UpdateSettings.from_config(
        RLPConfig(positions_per_step=4, ppo_epochs=3, mini_batches=2, micro_batch_size=5)
    )
    assert (rlp.epochs, rlp.mini_batches, rlp.micro_batch_rows, rlp.kl_coef) == (3, 2, 5, 0.0)
    assert rlp.loss_agg == "seq-mean-token-mean"
    assert rlp.minibatch_bounds(8) == [(0, 4), (4, 8)]  # the batch split evenly


# --------------------------------------------------------------------------- the shared loop


def test_one_optimizer_step_per_minibatch_and_the_hook_after_each():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    minibatches = [torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])]

    def loss(index: int, x: torch.Tensor) -> int:
        assert model.weight.grad is None  # zeroed (to None) before every mini-batch
        model(x).sum().backward()  # the gradient is x itself
        return index

    after_step: list[list[float]] = []
    settings = UpdateSettings(eps_low=0.2, eps_high=0.2, loss_agg="token-mean", grad_clip=1.0, epochs=2)
    steps = policy_update(
        model,
        optimizer,
        scheduler,
        minibatches,
        loss,
        settings,
        post_step=lambda: after_step.append(model.weight.detach().flatten().tolist()),
    )
    assert [s.stats for s in steps] == [0, 1, 0, 1]
    assert [s.grad_norm for s in steps] == pytest.approx([5.0, 1.0, 5.0, 1.0])  # before clipping
    # lr 1, 1/2, 1/3, 1/4; the [3, 4] gradient is clipped to norm 1: [0.6, 0.8].
    expected = [[0.4, 1.2], [-0.1, 1.2], [-0.3, 1.2 - 0.8 / 3], [-0.55, 1.2 - 0.8 / 3]]
    assert len(after_step) == 4
    for got, want in zip(after_step, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_clipped_loss_kl_term_is_zero_against_itself_and_beta_times_kl_otherwise():
    torch.manual_seed(0)
    logp = torch.randn(2, 3).requires_grad_()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([1.0, -1.0])
    settings = UpdateSettings(
        eps_low=0.2, eps_high=0.2, loss_agg="token-mean", grad_clip=0.0, kl_coef=0.1, kl_kind="k2"
    )
    loss, out, kl = clipped_loss(logp, logp.detach(), adv, mask, settings)
    assert kl is None and loss is out.loss
    # On-policy (ratio 1), token-mean: -(1 + 1 - 1) / 3.
    assert float(out.loss.detach()) == pytest.approx(-1 / 3)
    loss, out, kl = clipped_loss(logp, logp.detach(), adv, mask, settings, mask, logp.detach())
    assert float(kl.detach()) == 0.0 and float(loss.detach()) == float(out.loss.detach())
    loss, out, kl = clipped_loss(logp, logp.detach(), adv, mask, settings, mask, logp.detach() - 0.5)
    assert float(kl.detach()) == pytest.approx(0.125)  # k2 = (logp - ref)^2 / 2
    assert float(loss.detach()) == pytest.approx(-1 / 3 + 0.1 * 0.125)


def test_ema_teacher_hook_mixes_tau_of_the_teacher_with_the_policy():
    policy, teacher = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        policy.weight.fill_(2.0)
        teacher.weight.fill_(1.0)
    follow = ema_teacher_hook(teacher, policy, 0.75)
    follow()
    assert float(teacher.weight.detach()) == 0.75 * 1.0 + 0.25 * 2.0
    follow()
    assert float(teacher.weight.detach()) == pytest.approx(0.75 * 1.25 + 0.25 * 2.0)


# --------------------------------------------------------------------------- ProRL's entry point


def _train_batch() -> TrainBatch:
    sequences = [([1, 2], [3, 4, 5]), ([1, 2], [6, 7]), ([8], [9, 10, 11, 12]), ([8], [13])]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return TrainBatch([], advantages.view(2, 2), advantages, build_rl_batch(sequences, 0))


def test_update_on_groups_kl_starts_at_zero_when_the_reference_is_the_policy():
    policy = tiny_llama()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = UpdateSettings.from_config(ProRLConfig(n_samples=2, batch_prompts=2, mini_batch_prompts=1))
    settings = dataclasses.replace(settings, kl_coef=0.1)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    metrics = update_on_groups(policy, reference, optimizer, scheduler, _train_batch(), settings, CPU)
    assert metrics["updates"] == 2.0  # two groups of two rows, one group per optimizer step
    assert metrics["kl_start"] == 0.0  # before any update the policy IS its reference
    assert metrics["kl"] > 0.0  # the second mini-batch sees the policy after one step
    assert metrics["update_token_frac"] == 1.0 and metrics["adv_abs_mean"] == 0.75
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_update_on_groups_forking_tokens_and_no_reference():
    policy = tiny_llama()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = ProRLConfig(n_samples=2, batch_prompts=2, mini_batch_prompts=2, kl_coef=0.0, top_entropy_q=0.5)
    metrics = update_on_groups(
        policy, None, optimizer, scheduler, _train_batch(), UpdateSettings.from_config(cfg), CPU
    )
    assert "kl" not in metrics and "kl_start" not in metrics and metrics["updates"] == 1.0
    # ceil(q · n) of each response's n tokens: 2 of 3, 1 of 2, 2 of 4, 1 of 1 -> 6 of 10.
    assert metrics["update_token_frac"] == pytest.approx(0.6)
    assert metrics["ratio_mean"] == pytest.approx(1.0) and metrics["clip_frac"] == 0.0


# --------------------------------------------------------------------------- RLP's entry point


def test_update_on_thoughts_calls_the_hook_after_every_optimizer_step():
    open_, close = 5, 6
    positions = [Position(0, 3, (1, 10, 11), (12,)), Position(1, 2, (1, 20), (21,))]
    rollouts = [
        [Rollout([1, 10, 11, open_], [30, close], True), Rollout([1, 10, 11, open_], [31, 32], False)],
        [Rollout([1, 20, open_], [close], True), Rollout([1, 20, open_], [33], False)],
    ]
    batch = build_thought_batch(positions, rollouts, open_, close, 0)
    policy = tiny_llama()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = UpdateSettings.from_config(
        RLPConfig(positions_per_step=2, group_size=2, ppo_epochs=2, mini_batches=2, micro_batch_size=1)
    )
    old = score_thoughts(policy, batch, 4, CPU).old_logp
    lrs: list[float] = []
    metrics = update_on_thoughts(
        policy,
        optimizer,
        scheduler,
        batch,
        old,
        torch.tensor([1.0, -1.0, 0.5, -0.5]),
        settings,
        CPU,
        post_step=lambda: lrs.append(scheduler.last_epoch),
    )
    assert lrs == [1, 2, 3, 4]  # 2 epochs x 2 mini-batches, each hook after its scheduler step
    assert metrics["ratio_mean"] != 1.0  # later passes are off-policy: the ratio moved
    assert set(metrics) == {
        "clip_frac",
        "clip_frac_low",
        "clip_frac_high",
        "ratio_mean",
        "loss",
        "grad_norm",
        "lr",
    }


# --------------------------------------------------------------------------- token-budget micro-batches


def _long_train_batch() -> TrainBatch:
    """Two groups of four responses of 5-60 tokens over a 4096-token vocabulary."""
    generator = torch.Generator().manual_seed(2)
    lengths = [(4, 60), (4, 9), (4, 41), (4, 30), (6, 14), (6, 5), (6, 52), (6, 33)]
    sequences = [
        (
            torch.randint(1, 4096, (p,), generator=generator).tolist(),
            torch.randint(1, 4096, (c,), generator=generator).tolist(),
        )
        for p, c in lengths
    ]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, 0.4, -0.1, -0.5])
    return TrainBatch([], advantages.view(2, 4), advantages, build_rl_batch(sequences, 0))


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_update_on_groups_in_micro_batches_equals_whole_mini_batches_with_a_lower_peak(loss_agg: str):
    from tiny_hf import vocab_heavy_qwen3

    from slingshot.memory_probe import LiveBytes

    cfg = ProRLConfig(
        n_samples=4, batch_prompts=2, mini_batch_prompts=1, kl_coef=0.1, top_entropy_q=0.5, loss_agg=loss_agg
    )
    results = []
    for budget in (10**6, 70):  # whole mini-batches; one row per forward pass
        policy = vocab_heavy_qwen3()
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        optimizer = torch.optim.SGD(policy.parameters(), lr=1e-2)  # linear in the gradients, unlike Adam
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        settings = UpdateSettings.from_config(
            cfg.model_copy(
                update={"memory": cfg.memory.model_copy(update={"logprob_tokens_per_micro_batch": budget})}
            )
        )
        with LiveBytes() as probe:
            probe.track(policy.parameters())
            probe.track(reference.parameters())
            metrics = update_on_groups(
                policy, reference, optimizer, scheduler, _long_train_batch(), settings, CPU
            )
        results.append((metrics, [p.detach().clone() for p in policy.parameters()], probe.peak))
    (whole, whole_params, whole_peak), (micro, micro_params, micro_peak) = results
    assert whole.keys() == micro.keys()
    for key in whole:
        assert micro[key] == pytest.approx(whole[key], abs=1e-6), key
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole_params, micro_params, strict=True))
    assert micro_peak < 0.8 * whole_peak


def test_rlp_scoring_in_micro_batches_equals_one_pass():
    from tiny_hf import vocab_heavy_qwen3

    from slingshot.train.logprobs import PassSettings
    from slingshot.train.rlp_scoring import score_baseline

    open_, close = 5, 6
    positions = [Position(0, 3, (1, 10, 11, 40, 41), (12, 13)), Position(1, 2, (1, 20), (21, 22))]
    rollouts = [
        [
            Rollout([1, 10, 11, 40, 41, open_], [30, 34, 35, close], True),
            Rollout([1, 10, 11, 40, 41, open_], [31, 32], False),
        ],
        [Rollout([1, 20, open_], [close], True), Rollout([1, 20, open_], [33, 36, 37], False)],
    ]
    batch = build_thought_batch(positions, rollouts, open_, close, 0)
    model = vocab_heavy_qwen3().eval()
    whole = score_thoughts(model, batch, 8, CPU, PassSettings(10**6))
    micro = score_thoughts(model, batch, 8, CPU, PassSettings(12, logits_chunk_tokens=5))  # one row a pass
    valid = batch.thought_mask
    assert torch.allclose(micro.old_logp[valid], whole.old_logp[valid], atol=1e-6)
    assert torch.allclose(micro.s_pred, whole.s_pred, atol=1e-6)
    assert micro.entropy_sum == pytest.approx(whole.entropy_sum, abs=1e-5)
    baseline = [score_baseline(model, positions, 0, 8, CPU, PassSettings(b)) for b in (10**6, 1)]
    assert torch.allclose(baseline[0], baseline[1], atol=1e-6)


def test_update_on_groups_takes_the_ratio_against_the_engines_behaviour_logprobs():
    """One-step-async: θ_old is the engine's log-probs. Behaviour log-probs δ below the policy's
    own give the ratio e^δ on every token, and the token-mean loss −e^δ·mean(A) per mini-batch:
    (3·1 − 2·1)/5 = 0.2 and (4·0.5 − 0.5)/5 = 0.3, so −0.25·e^δ over the two."""
    from slingshot.train.logprobs import token_logprobs

    policy = tiny_llama()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)  # the policy stays put
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = ProRLConfig(n_samples=2, batch_prompts=2, mini_batch_prompts=1, kl_coef=0.0, loss_agg="token-mean")
    plain = _train_batch().batch
    with torch.no_grad():  # at the sampling temperature, as the engine's and the update's are
        at_t = PassSettings(temperature=cfg.temperature)
        own, _ = token_logprobs(
            policy, plain.input_ids, plain.attention_mask, plain.position_ids, passes=at_t
        )
    sequences = [([1, 2], [3, 4, 5]), ([1, 2], [6, 7]), ([8], [9, 10, 11, 12]), ([8], [13])]
    delta = 0.05
    behaviour = [
        (own[i, len(p) - 1 : len(p) - 1 + len(c)] - delta).tolist() for i, (p, c) in enumerate(sequences)
    ]
    train = _train_batch()
    train.batch = build_rl_batch(sequences, 0, behaviour)
    metrics = update_on_groups(
        policy, None, optimizer, scheduler, train, UpdateSettings.from_config(cfg), CPU
    )
    assert metrics["ratio_mean"] == pytest.approx(torch.e**delta, rel=1e-5)
    assert metrics["clip_frac"] == 0.0  # e^0.05 is inside [1 − ε_low, 1 + ε_high]
    assert metrics["policy_loss"] == pytest.approx(-0.25 * torch.e**delta, rel=1e-5)
    # Without them (synchronous runs) θ_old is the policy itself: ratio 1.
    sync = update_on_groups(
        policy, None, optimizer, scheduler, _train_batch(), UpdateSettings.from_config(cfg), CPU
    )
    assert sync["ratio_mean"] == pytest.approx(1.0) and sync["policy_loss"] == pytest.approx(-0.25)


def test_behaviour_logprobs_sit_in_the_logprob_frame_of_the_completion_tokens():
    batch = build_rl_batch([([1, 2], [3, 4]), ([5], [6, 7, 8])], 0, [[-0.1, -0.2], [-0.3, -0.4, -0.5]])
    expected = torch.tensor([[0.0, -0.1, -0.2], [-0.3, -0.4, -0.5]])
    assert torch.equal(batch.behaviour_logprobs, expected)
    assert (batch.behaviour_logprobs != 0).eq(batch.response_mask).all()
    trimmed = batch.rows(slice(0, 1))  # a mini-batch trimmed to its own width keeps the frame
    assert torch.equal(trimmed.behaviour_logprobs, expected[:1])
    with pytest.raises(ValueError, match="row 0: 1 behaviour log-probs for 2 tokens"):
        build_rl_batch([([1, 2], [3, 4])], 0, [[-0.1]])


def test_both_rl_stages_compute_their_ratio_log_probs_at_the_sampling_temperature():
    prorl, rlp = ProRLConfig(temperature=1.2), RLPConfig(temperature=0.7)
    assert UpdateSettings.from_config(prorl).passes.temperature == 1.2
    assert UpdateSettings.from_config(rlp).passes.temperature == 0.7


@pytest.mark.parametrize(
    ("delta", "bounds", "weight"),
    [
        (0.05, (0.5, 5.0, "mask"), torch.e**0.05),  # ρ_b = e^0.05 inside [0.5, 5]: kept
        (2.0, (0.5, 5.0, "mask"), 0.0),  # ρ_b = e^2 = 7.39 > 5: the tokens are dropped
        (2.0, (0.5, 5.0, "truncate"), 5.0),  # ... or truncated to 5
    ],
)
def test_behaviour_importance_weights_multiply_the_loss_and_the_ratio_is_against_theta_old(
    delta, bounds, weight
):
    """With behaviour_is the ratio is the trainer's π_θ/π_θold (1 here: the policy does not move)
    and each token's term is weighted by ρ_b = π_θold/π_behaviour: with behaviour log-probs δ
    below the policy's, the token-mean loss is −0.25·w (w = ρ_b, 0 or 5; see the test above)."""
    from slingshot.train.logprobs import token_logprobs

    policy = tiny_llama()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = ProRLConfig(n_samples=2, batch_prompts=2, mini_batch_prompts=1, kl_coef=0.0, loss_agg="token-mean")
    settings = dataclasses.replace(UpdateSettings.from_config(cfg), behaviour_is=bounds)
    plain = _train_batch().batch
    with torch.no_grad():
        at_t = PassSettings(temperature=cfg.temperature)
        own, _ = token_logprobs(
            policy, plain.input_ids, plain.attention_mask, plain.position_ids, passes=at_t
        )
    sequences = [([1, 2], [3, 4, 5]), ([1, 2], [6, 7]), ([8], [9, 10, 11, 12]), ([8], [13])]
    behaviour = [
        (own[i, len(p) - 1 : len(p) - 1 + len(c)] - delta).tolist() for i, (p, c) in enumerate(sequences)
    ]
    train = _train_batch()
    train.batch = build_rl_batch(sequences, 0, behaviour)
    metrics = update_on_groups(policy, None, optimizer, scheduler, train, settings, CPU)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["policy_loss"] == pytest.approx(-0.25 * weight, rel=1e-4, abs=1e-6)
    assert metrics["is_weight_mean"] == pytest.approx(weight, rel=1e-4)
    assert metrics["is_zero_frac"] == (1.0 if weight == 0.0 else 0.0)
