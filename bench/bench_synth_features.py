"""Benchmark: per-sample gradient features, torch.func (vmap over a batch) vs a per-sample loop.

Both compute the same SPEC §3 features (gradient of the mean completion NLL over all
parameters, projected with ``rademacher_project`` and normalised) for the same samples on a
tiny Llama built from config (the tiny recipe's proxy size by default). Each method runs in
its own subprocess so its peak-RSS growth (ru_maxrss) is measured cleanly; features/s is
measured after a warm-up. Per-sample gradients/s isolates what the two methods change;
features/s includes the projection, whose ±1 rows are generated once per group of
samples (a fixed cost per call that dominates at this size). The two methods' features are compared (max abs diff).

Usage: python bench/bench_synth_features.py [--samples 32] [--batch 8] [--dim 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def _build(hidden: int, layers: int, vocab: int):  # -> (model, tokenizer, pairs)
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slingshot.data.teacher import format_completion
    from slingshot.data.tokenizer import train_bpe

    rng = random.Random(0)
    pairs = []
    for _ in range(64):
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 9)
        steps = f"{a} + {b} = {a + b}\n{a + b} * {c} = {(a + b) * c}\nanswer: {(a + b) * c}"
        pairs.append((f"Calculate ({a} + {b}) * {c}.", format_completion(steps, str((a + b) * c))))
    tokenizer = train_bpe([p + " " + c for p, c in pairs] * 4, vocab_size=vocab)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)),  # the recipe's embedding size, whatever BPE learned
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg), tokenizer, pairs


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from slingshot.synth.features import FeatureSpec, encode, gradient_features, grads_loop, grads_vmap

    model, tokenizer, pairs = _build(args.hidden, args.layers, args.vocab)
    pairs = (pairs * ((args.samples // len(pairs)) + 1))[: args.samples]
    spec = FeatureSpec(
        dim=args.dim,
        seed=0,
        block_size=args.block,
        method=args.method,
        batch_size=args.batch,
        memory_mb=args.memory_mb,
    )
    # Warm-up of the gradient code paths only: a projection would cost as much as the
    # measured run (generating the signs is per call, whatever the batch).
    warm = [encode(tokenizer, p, c, spec.max_length) for p, c in pairs[:2]]
    grads_vmap(model, warm, tokenizer.pad_token_id) if args.method == "vmap" else grads_loop(model, warm)
    # Per-sample gradients alone (what vmap vs loop changes), then the full features
    # (gradients + projection of the whole group + normalisation).
    enc = [encode(tokenizer, p, c, spec.max_length) for p, c in pairs]
    t0 = time.perf_counter()
    for b in range(0, len(enc), args.batch):
        part = enc[b : b + args.batch]
        grads_vmap(model, part, tokenizer.pad_token_id) if args.method == "vmap" else grads_loop(model, part)
    dt_grads = time.perf_counter() - t0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    feats, tokens = gradient_features(model, tokenizer, pairs, spec)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(feats, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "method": args.method,
                "seconds": dt,
                "grads_per_s": len(pairs) / dt_grads,
                "features_per_s": len(pairs) / dt,
                "tokens_per_s": tokens / dt,
                "peak_rss_growth_mb": (peak - base) / 1024,
                "peak_rss_mb": peak / 1024,
                "params": n_params,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--block", type=int, default=65536)
    parser.add_argument("--memory-mb", type=float, default=512.0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", choices=["vmap", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        _worker(args)
        return

    import tempfile

    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("vmap", "loop"):
            out = os.path.join(tmp, f"{method}.pt")
            cmd = [sys.executable, __file__, "--method", method, "--out", out] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("method", "out")
            ]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{method} worker failed:\n{proc.stderr[-3000:]}")
            results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[method]["features"] = torch.load(out)
    v, lp = results["vmap"], results["loop"]
    diff = float((v["features"] - lp["features"]).abs().max())
    print(
        f"device: cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"{args.threads} thread(s)); torch {torch.__version__}"
    )
    print(
        f"model: tiny Llama, {v['params']:,} params (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}); "
        f"{args.samples} samples, dim {args.dim}, vmap batch {args.batch}, projection block {args.block}"
    )
    for name, r in (("torch.func vmap", v), ("per-sample loop", lp)):
        print(
            f"  {name:16s} {r['grads_per_s']:8.1f} per-sample grads/s  {r['features_per_s']:8.1f} features/s  "
            f"{r['tokens_per_s']:7.0f} tokens/s  "
            f"peak RSS growth {r['peak_rss_growth_mb']:7.1f} MiB (peak {r['peak_rss_mb']:.0f} MiB)"
        )
    print(
        f"ratio vmap/loop: gradients {v['grads_per_s'] / lp['grads_per_s']:.2f}x, "
        f"features {v['features_per_s'] / lp['features_per_s']:.2f}x, "
        f"peak RSS growth {v['peak_rss_growth_mb'] / max(lp['peak_rss_growth_mb'], 1e-9):.2f}x; "
        f"max |feature diff| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
