"""Megatron-Core training step (the pretrain stage's own) vs a plain PyTorch loop on the same HF Llama.

Both train the same architecture (RMSNorm, SwiGLU, RoPE, GQA) with AdamW(0.9, 0.95),
wd 0.1, grad clip 1.0, at the same batch and sequence length on the same device. Each
side runs in its own subprocess so the CPU shim Megatron needs never touches the plain
loop. Prints tokens/s of each, the ratio, the device, and MFU on a known GPU.

    python bench/bench_pretrain_step.py            # size picked for the device
    python bench/bench_pretrain_step.py --layers 8 --hidden 512 --seq 512 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from typing import Any

PRESETS: dict[str, dict[str, int]] = {
    # ~6M params: a few seconds per side on 2 CPU cores.
    "cpu": dict(layers=4, hidden=256, ffn=704, heads=8, groups=4, vocab=4096, seq=256, batch=4),
    # ~0.5B params: enough work per step to load an H100.
    "gpu": dict(layers=24, hidden=1024, ffn=2816, heads=16, groups=8, vocab=32768, seq=2048, batch=8),
}


def _model_cfg(a: argparse.Namespace) -> Any:
    from slingshot.models.config import GPTModelConfig

    return GPTModelConfig(
        num_layers=a.layers,
        hidden_size=a.hidden,
        ffn_hidden_size=a.ffn,
        num_attention_heads=a.heads,
        num_query_groups=a.groups,
        vocab_size=a.vocab,
        seq_length=a.seq,
        tie_embeddings=a.tie,
        hf_architecture=a.arch,
    )


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _best_window(step: Any, a: argparse.Namespace) -> float:
    """Seconds per step: the fastest of `repeats` timed windows of `steps` steps after warmup.

    The best window is the least disturbed by other work on a shared machine."""
    for _ in range(a.warmup):
        step()
    best = float("inf")
    for _ in range(a.repeats):
        _sync()
        start = time.perf_counter()
        for _ in range(a.steps):
            step()
        _sync()
        best = min(best, (time.perf_counter() - start) / a.steps)
    return best


def run_mcore(a: argparse.Namespace) -> float:
    import torch

    from slingshot.config import OptimizerConfig
    from slingshot.models.megatron_gpt import build_gpt, destroy_model_parallel, init_model_parallel
    from slingshot.models.megatron_train import train_step, wrap_for_training

    init_model_parallel(1, 1)
    cfg = _model_cfg(a)
    model = build_gpt(cfg, bf16=a.bf16)
    optimizer = OptimizerConfig(lr=3e-4)  # betas (0.9, 0.95), wd 0.1, clip 1.0 like the HF side
    ddp, opt = wrap_for_training(model, optimizer, bf16=a.bf16)
    # The stage's micro-batch: CPU tensors from the dataset, moved to the GPU by the step.
    data = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1))
    batch = {"tokens": data[:, :-1], "labels": data[:, 1:], "loss_mask": torch.ones(a.batch, a.seq)}
    per_step = _best_window(lambda: train_step(ddp, opt, [batch], optimizer.lr), a)
    destroy_model_parallel()
    return a.batch * a.seq / per_step


def run_hf(a: argparse.Namespace) -> float:
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from slingshot.models.export import hf_config

    cfg = _model_cfg(a)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_config(hf_config(cfg)).to(dev).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=dev == "cuda"
    )
    data = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cuda", torch.bfloat16) if a.bf16 else contextlib.nullcontext()
        with ctx:
            loss = model(input_ids=data, labels=data).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())  # same host sync per step as Megatron's logging

    return a.batch * a.seq / _best_window(step, a)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    on_gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in PRESETS["gpu" if on_gpu else "cpu"].items():
        p.add_argument(f"--{key}", type=int, default=value)
    p.add_argument("--steps", type=int, default=10 if on_gpu else 4, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=2, help="timed windows per process; fastest wins")
    p.add_argument("--rounds", type=int, default=2, help="alternating mcore/hf process pairs")
    p.add_argument("--warmup", type=int, default=5 if on_gpu else 2)
    p.add_argument("--tie", action="store_true", help="tie input and output embeddings")
    p.add_argument("--arch", choices=["llama", "qwen2", "qwen3"], default="llama", help="layer layout")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=on_gpu)
    p.add_argument("--only", choices=["mcore", "hf"], help=argparse.SUPPRESS)  # internal: one side
    a = p.parse_args(argv)
    if a.bf16 and not on_gpu:
        p.error("--bf16 needs a GPU (CPU runs are fp32)")
    return a


def _run_side(side: str, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--only", side], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{side} side failed (exit {proc.returncode})")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_s"])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = _parse(argv)
    if a.only:
        warnings.filterwarnings("ignore")
        tps = run_mcore(a) if a.only == "mcore" else run_hf(a)
        import torch

        memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        print(json.dumps({"tokens_per_s": tps, "max_memory_bytes": memory}))
        return

    import torch

    from slingshot.models.flops import mfu, train_flops_per_token

    on_gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if on_gpu else f"cpu ({torch.get_num_threads()} threads)"
    cfg = _model_cfg(a)
    # Alternate the sides so a burst of other load on a shared machine hits both alike.
    mcore_tps = hf_tps = 0.0
    for _ in range(a.rounds):
        mcore_tps = max(mcore_tps, _run_side("mcore", argv))
        hf_tps = max(hf_tps, _run_side("hf", argv))
    print(f"device: {device}  dtype: {'bf16' if a.bf16 else 'fp32'}  torch {torch.__version__}")
    print(
        f"model: {cfg.num_parameters() / 1e6:.1f}M params, L={a.layers} H={a.hidden} F={a.ffn} "
        f"heads={a.heads}/{a.groups} V={a.vocab}; batch={a.batch} seq={a.seq} "
        f"best of {a.rounds}x{a.repeats} windows of {a.steps} steps"
    )
    print(f"flops/token (6N + attn): {train_flops_per_token(cfg):.3e}")
    for name, tps in (("megatron-core", mcore_tps), ("hf+torch loop", hf_tps)):
        util = mfu(cfg, tps, device, bf16=a.bf16) if on_gpu else None
        mfu_s = f"{100 * util:.1f}%" if util is not None else "n/a"
        print(f"{name:>14}: {tps:12.0f} tokens/s  MFU {mfu_s}")
    print(f"ratio megatron-core / hf: {mcore_tps / hf_tps:.2f}x")


if __name__ == "__main__":  # Megatron's dist_checkpointing spawns processes: keep the guard
    main()
