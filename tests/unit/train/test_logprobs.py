"""Per-token log-probabilities and entropies of a causal LM."""

import torch
from tiny_hf import tiny_llama, vocab_heavy_qwen3

from slingshot.train.logprobs import PassSettings, batched_token_logprobs, micro_batches, token_logprobs


def test_token_logprobs_match_the_loss():
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 10))
    logp, ent = token_logprobs(model, ids, with_entropy=True)
    assert logp.shape == (3, 9) and ent.shape == (3, 9)
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.allclose(-logp.mean(), loss, atol=1e-5)
    assert (ent >= 0).all() and (ent <= torch.log(torch.tensor(64.0)) + 1e-4).all()


# --------------------------------------------------------------------------- bounded passes


def _ragged_batch(rows: int = 8, width: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 4096, (rows, width), generator=generator)
    attention = torch.ones_like(ids)
    for i in range(rows):  # right padding: rows of different lengths
        attention[i, width - 3 * i :] = 0
    return ids, attention


def _peak(fn) -> tuple[object, int]:
    from slingshot.memory_probe import LiveBytes

    with LiveBytes() as probe:
        out = fn()
    return out, probe.peak


def test_micro_batched_log_probs_and_entropies_equal_the_whole_batch_with_a_lower_peak():
    model = vocab_heavy_qwen3()
    ids, attention = _ragged_batch()
    valid = attention[:, 1:].bool()
    whole, whole_peak = _peak(
        lambda: batched_token_logprobs(model, ids, attention, None, True, PassSettings(10**6))
    )
    # 96 tokens a pass: 2 rows of 48; with 64-token logit chunks on top.
    for passes in (PassSettings(96), PassSettings(96, logits_chunk_tokens=64)):
        micro, micro_peak = _peak(
            lambda passes=passes: batched_token_logprobs(model, ids, attention, None, True, passes)
        )
        for a, b in zip(micro, whole, strict=True):
            assert torch.allclose(a[valid], b[valid], atol=1e-6)
        assert micro_peak < 0.5 * whole_peak  # 2 of 8 rows' logits at a time


def test_chunked_logits_give_the_same_log_probs_and_gradients():
    ids, attention = _ragged_batch(rows=2)
    grads = []
    for chunk in (None, 40):
        model = vocab_heavy_qwen3()
        logp, entropy = token_logprobs(
            model, ids, attention, with_entropy=True, passes=PassSettings(10**6, chunk)
        )
        assert entropy is not None and not entropy.requires_grad
        (logp * attention[:, 1:]).sum().backward()
        grads.append((logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = grads
    assert torch.allclose(lp_a, lp_b, atol=1e-6) and torch.allclose(ent_a, ent_b, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_a, g_b, strict=True))


def test_micro_batches_fit_the_token_budget_with_at_least_one_row():
    assert list(micro_batches(5, 10, 25)) == [(0, 2), (2, 4), (4, 5)]
    assert list(micro_batches(3, 100, 25)) == [(0, 1), (1, 2), (2, 3)]  # a row over the budget still runs
    assert list(micro_batches(4, 10, 10**6, max_rows=3)) == [(0, 3), (3, 4)]


def test_log_probs_at_a_temperature_are_log_softmax_of_logits_over_t_in_every_pass_shape():
    model = vocab_heavy_qwen3()
    ids, attention = _ragged_batch(rows=2)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits.float()
    expected = torch.log_softmax(logits[:, :-1] / 0.7, -1).gather(2, ids[:, 1:, None])[..., 0]
    raw_entropy = -(torch.softmax(logits[:, :-1], -1) * torch.log_softmax(logits[:, :-1], -1)).sum(-1)
    valid = attention[:, 1:].bool()
    for chunk in (None, 40):
        passes = PassSettings(10**6, logits_chunk_tokens=chunk, temperature=0.7)
        with_grad, _ = token_logprobs(model, ids, attention, passes=passes)  # the fused training path
        no_grad, entropy = batched_token_logprobs(model, ids, attention, None, True, passes)
        assert torch.allclose(with_grad.detach()[valid], expected[valid], atol=1e-5)
        assert torch.allclose(no_grad[valid], expected[valid], atol=1e-5)
        assert torch.allclose(entropy[valid], raw_entropy[valid], atol=1e-4)  # the model's own (T = 1)


def test_entropies_of_the_top_k_when_asked():
    from slingshot.algorithms.entropy import topk_entropy

    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    _, entropy = batched_token_logprobs(
        model, ids, torch.ones_like(ids), None, True, PassSettings(entropy_top_k=4)
    )
    assert torch.allclose(entropy, topk_entropy(logits, 4), atol=1e-5)
    assert (entropy <= torch.log(torch.tensor(4.0)) + 1e-5).all()
