"""A training stage's checkpointed state: named parts with a state_dict, plus the RNG streams."""

import torch
from tiny_hf import tiny_llama

from slingshot.config import OptimizerConfig
from slingshot.train.optim import build_optimizer, build_scheduler
from slingshot.train.state import Counter, ModelOptimizerState, TrainState


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


def test_model_and_optimizer_as_one_part(tmp_path):
    """The supervised loop's ``core`` part: one entry holding the model and its optimizer."""
    model = tiny_llama()
    opt = build_optimizer(model, OptimizerConfig(lr=1e-2))
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    TrainState(core=ModelOptimizerState(model, opt)).save(tmp_path)
    model2 = tiny_llama()  # the untrained weights
    opt2 = build_optimizer(model2, OptimizerConfig(lr=1e-2))
    TrainState(core=ModelOptimizerState(model2, opt2)).load(tmp_path)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    moments = [opt2.state[p]["exp_avg"] for p in model2.parameters()]
    assert all(
        torch.equal(m, opt.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters(), strict=True)
    )
    assert opt2.state[next(model2.parameters())]["step"] == 1


def test_a_checkpoint_of_the_old_single_file_format_is_refused_by_name(tmp_path):
    import pytest

    model = tiny_llama()
    opt = build_optimizer(model, OptimizerConfig(lr=1e-2))
    torch.save(
        {"core": {"model": model.state_dict(), "optimizer": opt.state_dict()}}, tmp_path / "train_state.pt"
    )
    with pytest.raises(RuntimeError, match=f"checkpoint {tmp_path} is in the old single-file format"):
        TrainState(core=ModelOptimizerState(model, opt)).load(tmp_path)
