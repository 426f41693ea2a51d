"""Benchmark: tokenize + pack throughput, our path vs a per-document loop over the HF tokenizer.

Corpus: the tiny recipe's own data, generated on the fly (general text + teacher reasoning
traces, interleaved), tokenized with a byte-level BPE trained here (nothing downloaded).

* ours: ``slingshot.data.packing.tokenize_documents`` (the fast tokenizer's Rust
  ``encode_batch`` over batches of documents) + ``pack_pretraining`` (numpy concatenation
  and reshaping into fixed-length sequences with eos, position ids and boundaries).
* baseline: ``tokenizer.encode(doc)`` one document at a time (the transformers wrapper),
  then packing with Python lists (append eos, extend a buffer, slice sequences).

Both produce the same token stream (checked). Throughput is tokens/s over the whole
tokenize+pack pipeline, best of ``--repeats`` interleaved runs. Runs in well under 60 s on 2 CPU cores.

Usage: python bench/bench_tokenize_pack.py [--docs 20000] [--seq-len 512] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def _baseline(tokenizer, texts: list[str], seq_len: int, eos: int) -> list[list[int]]:  # noqa: ANN001
    buf: list[int] = []
    seqs: list[list[int]] = []
    for text in texts:
        buf.extend(tokenizer.encode(text, add_special_tokens=False))
        buf.append(eos)
        while len(buf) >= seq_len:
            seqs.append(buf[:seq_len])
            buf = buf[seq_len:]
    return seqs


def _ours(tokenizer, texts: list[str], seq_len: int, eos: int) -> list:  # noqa: ANN001
    from slingshot.data.packing import pack_pretraining, tokenize_documents

    return list(pack_pretraining(tokenize_documents(tokenizer, texts, batch_size=1024), seq_len, eos))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="Rust tokenizer threads (RAYON_NUM_THREADS)")
    args = ap.parse_args()
    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # set before the tokenizer loads

    from slingshot.data.synthetic import generate_general_text, reasoning_records
    from slingshot.data.tasks import BUILTIN_FAMILIES, SplitSizes, make_splits
    from slingshot.data.teacher import ProceduralTeacher
    from slingshot.data.tokenizer import train_bpe

    t0 = time.perf_counter()
    n_reason = args.docs // 4
    per_family = max(1, n_reason // len(BUILTIN_FAMILIES))
    entries = make_splits(BUILTIN_FAMILIES, SplitSizes(train=per_family, validation=1, test=1), seed=0)[
        "train"
    ]
    reasoning = [r["text"] for r in reasoning_records(entries, ProceduralTeacher())]
    general = [d["text"] for d in generate_general_text(args.docs - len(reasoning), seed=0)]
    texts = [t for pair in zip(general, reasoning, strict=False) for t in pair] + general[len(reasoning) :]
    tokenizer = train_bpe(texts[:4000], vocab_size=args.vocab)
    eos = tokenizer.eos_token_id
    setup_s = time.perf_counter() - t0

    # Interleave the two methods and keep each one's best time: other processes on a
    # shared machine slow whichever runs at the wrong moment, not one method always.
    t_base = t_ours = float("inf")
    base: list[list[int]] = []
    ours: list = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        base = _baseline(tokenizer, texts, args.seq_len, eos)
        t_base = min(t_base, time.perf_counter() - t)
        t = time.perf_counter()
        ours = _ours(tokenizer, texts, args.seq_len, eos)
        t_ours = min(t_ours, time.perf_counter() - t)
    assert len(base) == len(ours) and all(list(o.input_ids) == b for o, b in zip(ours, base, strict=True))
    tokens = len(ours) * args.seq_len

    cpu = platform.processor() or platform.machine()
    print(
        f"device: CPU ({cpu}, {os.cpu_count()} cores), RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'auto')}"
    )
    print(
        f"corpus: {len(texts)} docs ({len(reasoning)} reasoning traces), {sum(map(len, texts)) / 1e6:.2f} M chars, "
        f"vocab {len(tokenizer)}, seq_len {args.seq_len}, {len(ours)} packed sequences, {tokens} tokens "
        f"(setup {setup_s:.1f} s)"
    )
    print(
        f"baseline (per-document tokenizer.encode + list packing): {tokens / t_base:>12,.0f} tokens/s  ({t_base:.3f} s)"
    )
    print(
        f"ours     (batch encode_batch + numpy packing):           {tokens / t_ours:>12,.0f} tokens/s  ({t_ours:.3f} s)"
    )
    print(f"ratio ours/baseline: {t_base / t_ours:.2f}x")


if __name__ == "__main__":
    main()
