"""Per-token log-probabilities and entropies of a causal LM."""

import torch
from tiny_hf import tiny_llama

from slingshot.train.logprobs import token_logprobs


def test_token_logprobs_match_the_loss():
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 10))
    logp, ent = token_logprobs(model, ids, with_entropy=True)
    assert logp.shape == (3, 9) and ent.shape == (3, 9)
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.allclose(-logp.mean(), loss, atol=1e-5)
    assert (ent >= 0).all() and (ent <= torch.log(torch.tensor(64.0)) + 1e-4).all()
