"""RLP step time: generation, scoring and update, thought tokens/s, and batched vs naive scoring.

One RLP step (SPEC §2) = sample G thoughts for each of B positions, score all B·G
``context <think> c </think> target`` sequences teacher-forced (S_pred and the old
log-probs) plus the EMA teacher's B no-thought sequences (S_ema), then the clipped
policy update on the thought tokens. The stage scores in one padded batch
(``slingshot.train.rlp_scoring.score_thoughts``); the peer here is the naive loop that runs the
model once per thought (and once per position for S_ema), which is what a per-sample
implementation does. Both must give the same numbers (checked) and the ratio is printed.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_rlp_step.py [--steps 3] [--shapes 4x4,8x8]

The model is the tiny recipe's shape (4 layers, hidden 128), random weights, random
context tokens: speed does not depend on what the tokens say. No data stage needed.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slingshot.algorithms.rlp import information_gain_reward, rlp_group_advantages
from slingshot.config import RLPConfig
from slingshot.rollout.hf import HFRollout
from slingshot.train.logprobs import token_logprobs
from slingshot.train.optim import build_optimizer, build_scheduler
from slingshot.train.policy_update import UpdateSettings, ema_teacher_hook, update_on_thoughts
from slingshot.train.rlp_batch import Position, build_thought_batch, prompt_ids
from slingshot.train.rlp_scoring import score_baseline, score_thoughts

PAD, EOS, OPEN, CLOSE = 0, 1, 5, 6


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, torch threads={torch.get_num_threads()}"


def naive_scores(
    model: torch.nn.Module, ema: torch.nn.Module, batch, positions: list[Position], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """What score_thoughts + score_baseline compute, one unpadded forward per sequence:
    S_pred, the old log-probs and entropy of the thought tokens, and S_ema."""
    s_pred = []
    with torch.no_grad():
        for i in range(batch.input_ids.shape[0]):
            n = int(batch.attention_mask[i].sum())
            logp, entropy = token_logprobs(
                model, batch.input_ids[i : i + 1, :n].to(device), with_entropy=True
            )
            mask = batch.thought_mask[i, : n - 1].to(device)
            _old_logp, _entropy = logp[0, mask].cpu(), float(entropy[0, mask].sum())
            s_pred.append(logp[0, batch.target_index[i].to(device)].cpu())
        s_ema = []
        for p in positions:
            ids = torch.tensor([[*p.context, *p.target]], device=device)
            logp, _ = token_logprobs(ema, ids)
            s_ema.append(logp[0, len(p.context) - 1 :].cpu())
    return torch.stack(s_pred), torch.stack(s_ema)


def bench_shape(b: int, g: int, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=2048,
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    ).to(device)
    model.eval()
    ema = copy.deepcopy(model).requires_grad_(False)
    cfg = RLPConfig(
        positions_per_step=b,
        group_size=g,
        thought_tokens=args.thought_tokens,
        context_tokens=args.context_tokens,
        micro_batch_size=b * g,
        temperature=1.0,
        optimizer={"lr": 1e-5, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0},
    )
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer, args.steps + 1)
    settings = UpdateSettings.from_config(cfg)
    follow_policy = ema_teacher_hook(ema, model, cfg.ema_tau)
    # At random weights </think> is sampled with p ~ 1/vocab per token, so thoughts nearly
    # always run to the length limit (tokens/s counts what was actually generated).
    backend = HFRollout(model, pad_token_id=PAD, stop_token_ids=[CLOSE], batch_size=b * g)
    gen = torch.Generator().manual_seed(1)
    times = {"generate": 0.0, "score": 0.0, "update": 0.0, "naive": 0.0}
    thought_tokens = 0
    max_diff = 0.0
    for step in range(args.steps + 1):  # step 0 is warm-up, not timed
        positions = []
        for _ in range(b):
            ctx = torch.randint(10, 2048, (args.context_tokens,), generator=gen).tolist()
            positions.append(
                Position(0, len(ctx), (EOS, *ctx), (int(torch.randint(10, 2048, (1,), generator=gen)),))
            )
        t0 = time.perf_counter()
        rollouts = backend.generate(
            [prompt_ids(p, OPEN) for p in positions], g, cfg.thought_tokens, cfg.temperature, seed=step
        )
        t1 = time.perf_counter()
        batch = build_thought_batch(positions, rollouts, OPEN, CLOSE, PAD)
        scores = score_thoughts(model, batch, cfg.micro_batch_size, device)
        s_ema = score_baseline(ema, positions, PAD, cfg.micro_batch_size, device)
        rewards = information_gain_reward(
            scores.s_pred.view(b, g, 1), s_ema.view(b, 1, 1).expand(b, g, 1), multi_token=True
        )
        advantages = rlp_group_advantages(rewards).reshape(-1)
        t2 = time.perf_counter()
        naive_pred, naive_ema = naive_scores(model, ema, batch, positions, device)
        t3 = time.perf_counter()
        update_on_thoughts(
            model, optimizer, scheduler, batch, scores.old_logp, advantages, settings, device, follow_policy
        )
        t4 = time.perf_counter()
        max_diff = max(
            max_diff,
            float((naive_pred - scores.s_pred).abs().max()),
            float((naive_ema - s_ema).abs().max()),
        )
        if step == 0:
            continue
        times["generate"] += t1 - t0
        times["score"] += t2 - t1
        times["naive"] += t3 - t2
        times["update"] += t4 - t3
        thought_tokens += int(batch.thought_lengths.sum())
    n = args.steps
    step_time = (times["generate"] + times["score"] + times["update"]) / n
    print(
        f"B={b} G={g} context={args.context_tokens} thought={args.thought_tokens}: "
        f"step {step_time * 1000:.0f} ms = generate {times['generate'] / n * 1000:.0f} ms "
        f"+ score {times['score'] / n * 1000:.0f} ms + update {times['update'] / n * 1000:.0f} ms; "
        f"{thought_tokens / times['generate']:.0f} thought tokens/s generated"
    )
    print(
        f"    scoring B·G={b * g} thoughts + B={b} baselines: batched {times['score'] / n * 1000:.1f} ms, "
        f"naive per-thought loop {times['naive'] / n * 1000:.1f} ms -> batched is "
        f"{times['naive'] / times['score']:.2f}x faster (max |Δ log p| = {max_diff:.1e})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--shapes", default="4x4,8x8", help="comma-separated BxG")
    parser.add_argument("--context-tokens", type=int, default=128)
    parser.add_argument("--thought-tokens", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device_name(device)}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for shape in args.shapes.split(","):
        b, g = (int(x) for x in shape.lower().split("x"))
        bench_shape(b, g, args, device)


if __name__ == "__main__":
    main()
