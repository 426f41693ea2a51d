"""Peak memory and time of ProRL's log-prob passes: micro-batched by a token budget (and with
chunked logits) vs the whole mini-batch in one forward, same model, same rows.

Two passes, as ProRL runs them on each mini-batch:

* no-grad: θ_old log-probs and entropies (and the reference's), ``batched_token_logprobs``;
* training: log-probs with gradient, then backward (the mini-batch's gradient accumulated
  over its micro-batches).

Peak = the bytes of live tensors above the model's own (weights, and gradients for the
training pass): ``torch.cuda.max_memory_allocated`` on a GPU, live-storage tracking
(slingshot.memory_probe.LiveBytes) on CPU. Times are the median of ``--repeats``.

    python bench/bench_logprob_memory.py                       # CPU-sized defaults
    python bench/bench_logprob_memory.py --rows 64 --width 2048 --vocab 151936 --hidden 1024   # a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from slingshot.memory_probe import LiveBytes
from slingshot.train.logprobs import PassSettings, batched_token_logprobs, micro_batches, token_logprobs


def build_model(a: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=3 * a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 64,
        num_key_value_heads=max(1, a.hidden // 128),
        head_dim=64,
        max_position_embeddings=max(a.width, 1024),
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(cfg).to(device)


def measure(fn: Callable[[], None], device: torch.device, repeats: int) -> tuple[float, float]:
    """(peak bytes above what exists before, median seconds)."""
    times = []
    peak = 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            peak = max(peak, torch.cuda.max_memory_allocated() - before)
        else:
            with LiveBytes() as probe:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            peak = max(peak, probe.peak)
    return peak, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16, help="rows of the mini-batch")
    parser.add_argument("--width", type=int, default=256, help="tokens per row")
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--budget", type=int, default=1024, help="logprob_tokens_per_micro_batch")
    parser.add_argument("--chunk", type=int, default=256, help="logits_chunk_tokens of the chunked run")
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(a, device)
    ids = torch.randint(0, a.vocab, (a.rows, a.width), device=device)
    attention = torch.ones_like(ids)
    bf16 = device.type == "cuda"
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device {name}; {a.rows} rows x {a.width} tokens, vocab {a.vocab}, hidden {a.hidden}, "
        f"{a.layers} layers, {'bf16 autocast' if bf16 else 'fp32'}; budget {a.budget} tokens"
    )
    settings = {
        "whole mini-batch": PassSettings(10**9, None, bf16),
        f"micro-batched ({a.budget} tokens)": PassSettings(a.budget, None, bf16),
        f"micro-batched + {a.chunk}-token logit chunks": PassSettings(a.budget, a.chunk, bf16),
    }

    def no_grad(passes: PassSettings) -> Callable[[], None]:
        return lambda: batched_token_logprobs(model, ids, attention, None, True, passes)

    def training(passes: PassSettings) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=False)  # gradients exist beforehand, as in a step
            for start, stop in micro_batches(a.rows, a.width, passes.tokens_per_micro_batch):
                logp, _ = token_logprobs(model, ids[start:stop], attention[start:stop], passes=passes)
                (logp.sum() / ids.numel()).backward()

        return run

    for label, pass_fn in (("no-grad log-prob pass", no_grad), ("training forward+backward", training)):
        if pass_fn is training:  # allocate the gradients once, outside the measurement
            token_logprobs(model, ids[:1], attention[:1])[0].sum().backward()
        results = {key: measure(pass_fn(passes), device, a.repeats) for key, passes in settings.items()}
        base_peak, base_time = results["whole mini-batch"]
        print(f"\n{label}:")
        for key, (peak, seconds) in results.items():
            print(
                f"  {key:42s} peak {peak / 2**20:9.1f} MiB ({peak / base_peak:5.3f} of whole)  "
                f"time {seconds * 1e3:8.1f} ms ({seconds / base_time:5.2f}x)"
            )


if __name__ == "__main__":
    main()
