"""The pieces every training stage shares: schedule, train state, log-probs, HF rollouts, model dirs."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slingshot.config import OptimizerConfig
from slingshot.models.hf import ModelDirError, check_model_dir, load_model_and_tokenizer, save_model_dir
from slingshot.rollout.hf import HFRollout
from slingshot.train.logprobs import token_logprobs
from slingshot.train.optim import build_optimizer, build_scheduler, lr_factor
from slingshot.train.state import Counter, TrainState


def tiny_llama(vocab: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg)


def test_warmup_then_cosine_to_the_floor():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.1, schedule="cosine")
    # warmup: 1/2, 2/2; then cosine over the 4 remaining steps from 1 down to 0.1
    assert [round(lr_factor(s, cfg, 6), 4) for s in range(7)] == [0.5, 1.0, 1.0, 0.8682, 0.55, 0.2318, 0.1]
    const = OptimizerConfig(lr=1.0, warmup_steps=0, schedule="constant")
    assert lr_factor(100, const, 10) == 1.0


def test_no_weight_decay_on_norms():
    model = tiny_llama()
    opt = build_optimizer(model, OptimizerConfig(weight_decay=0.1))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert all((id(p) in decayed) == (p.ndim >= 2) for p in model.parameters())


def test_train_state_round_trip_restores_everything(tmp_path):
    model = tiny_llama()
    opt = build_optimizer(model, OptimizerConfig(lr=1e-2, warmup_steps=1))
    sched = build_scheduler(opt, OptimizerConfig(lr=1e-2, warmup_steps=1), 10)
    data = Counter(position=3)
    state = TrainState(model=model, optimizer=opt, scheduler=sched, data=data)
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    state.save(tmp_path)
    expected = torch.rand(3)
    model2 = tiny_llama()
    opt2 = build_optimizer(model2, OptimizerConfig(lr=1e-2, warmup_steps=1))
    sched2 = build_scheduler(opt2, OptimizerConfig(lr=1e-2, warmup_steps=1), 10)
    data2 = Counter(position=0)
    TrainState(model=model2, optimizer=opt2, scheduler=sched2, data=data2).load(tmp_path)
    assert torch.equal(torch.rand(3), expected)  # RNG restored to the saved point
    assert data2["position"] == 3 and sched2.last_epoch == 1
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_token_logprobs_match_the_loss():
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 10))
    logp, ent = token_logprobs(model, ids, with_entropy=True)
    assert logp.shape == (3, 9) and ent.shape == (3, 9)
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.allclose(-logp.mean(), loss, atol=1e-5)
    assert (ent >= 0).all() and (ent <= torch.log(torch.tensor(64.0)) + 1e-4).all()


def test_hf_rollout_groups_samples_and_flags_truncation():
    model = tiny_llama()
    stop = 5
    backend = HFRollout(model, pad_token_id=0, stop_token_ids=[stop])
    groups = backend.generate([[1, 2, 3], [4, 6]], n=3, max_new_tokens=6, temperature=1.0, seed=0)
    assert [len(g) for g in groups] == [3, 3]
    for prompt, group in zip([[1, 2, 3], [4, 6]], groups, strict=True):
        for r in group:
            assert r.prompt_ids == prompt
            assert r.finished == (r.completion_ids[-1] == stop)
            assert r.finished or len(r.completion_ids) == 6
            assert stop not in r.completion_ids[:-1]


def test_model_dir_checks_name_what_is_missing(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="has no weights"):
        check_model_dir(tmp_path / "m")


def test_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    from slingshot.data.tokenizer import train_bpe

    tokenizer = train_bpe(["hello world " * 50, "some more text here"] * 20, vocab_size=300, min_frequency=1)
    save_model_dir(tiny_llama(vocab=64), tokenizer, tmp_path / "m")
    with pytest.raises(ModelDirError, match="do not belong together"):
        load_model_and_tokenizer(tmp_path / "m")


def test_the_unwritten_vllm_backend_says_so():
    from slingshot.config import RolloutConfig
    from slingshot.rollout import make_rollout

    with pytest.raises(NotImplementedError, match="rollout.backend 'vllm' is not implemented yet"):
        make_rollout(RolloutConfig(backend="vllm"), tiny_llama(), None, [])
