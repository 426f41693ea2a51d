"""AdamW parameter groups, the warmup/cosine schedule, and clipping a model's gradients."""

from tiny_hf import tiny_llama

from slingshot.config import OptimizerConfig
from slingshot.train.optim import build_optimizer, lr_factor


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
