"""HF model directories, the hand-off format between stages: checked before loading."""

import pytest
from tiny_hf import tiny_llama

from slingshot.models.hf import ModelDirError, check_model_dir, load_model_and_tokenizer, save_model_dir


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


# --------------------------------------------------------------------------- memory switches


def _grads_and_peak(model) -> tuple[list, int]:
    import torch

    from slingshot.memory_probe import LiveBytes
    from slingshot.train.logprobs import token_logprobs

    ids = torch.randint(0, 64, (4, 48), generator=torch.Generator().manual_seed(0))
    with LiveBytes() as probe:
        logp, _ = token_logprobs(model, ids)
        saved = probe.current  # what the forward keeps for the backward pass
        logp.mean().backward()
    return [p.grad.clone() for p in model.parameters()], saved


@pytest.mark.parametrize("eval_mode", [False, True])
def test_activation_checkpointing_gives_the_same_gradients_and_saves_less(eval_mode: bool):
    import torch

    from slingshot.models.hf import enable_activation_checkpointing, eval_mode_keeping_checkpoints

    plain = tiny_llama().train(not eval_mode)
    checkpointed = tiny_llama()
    enable_activation_checkpointing(checkpointed)
    if eval_mode:  # RLP trains in eval mode (no dropout): checkpointing must still happen
        eval_mode_keeping_checkpoints(checkpointed)
        assert not checkpointed.model.layers[0].self_attn.training
    grads, saved = _grads_and_peak(plain)
    checkpointed_grads, checkpointed_saved = _grads_and_peak(checkpointed)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, checkpointed_grads, strict=True))
    assert checkpointed_saved < 0.6 * saved


def test_frozen_copies_are_fp32_bf16_or_in_host_memory_and_resident_is_a_no_op_on_cpu():
    import torch

    from slingshot.models.hf import frozen_copy, resident

    policy = tiny_llama()
    for placement, dtype in (("device", torch.float32), ("bf16", torch.bfloat16), ("cpu", torch.float32)):
        copy = frozen_copy(policy, placement)
        assert not copy.training and all(not p.requires_grad and p.dtype == dtype for p in copy.parameters())
    assert all(p.requires_grad for p in policy.parameters())  # the policy itself is untouched
    with resident(copy, "cpu"):
        assert next(copy.parameters()).device.type == "cpu"
