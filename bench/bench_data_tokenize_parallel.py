"""Benchmark: the data stage's corpus tokenization in worker processes vs in one process.

Corpus: generated general text written as JSONL (the format of the data stage's own
corpora and most user corpora), tokenized with a byte-level BPE trained here (nothing
downloaded). Both runs are the data stage's own code path,
``write_indexed_batches(prefix, encode(text_chunks(spec)))`` under
``slingshot.data.build.chunk_encoder``:

* serial: ``workers=1``: reading, JSON parsing, encoding and writing in this process (the
  Rust ``encode_batch`` may use its own threads: RAYON_NUM_THREADS as set, default all cores);
* parallel: ``workers=N`` spawned processes (one Rust thread each) parse and encode chunks
  of 1024 lines; this process reads lines and writes the .bin/.idx in order.

The two .bin/.idx pairs are checked byte-identical. Times are best of ``--repeats``
interleaved runs; the parallel time includes starting the worker pool (as in the stage).

Usage: python bench/bench_data_tokenize_parallel.py [--docs 60000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def _run(tokenizer, spec, prefix: Path, workers: int) -> tuple[float, float, object]:  # noqa: ANN001
    """(wall seconds, this process's CPU seconds, stats)."""
    from slingshot.data.build import chunk_encoder
    from slingshot.data.corpora import text_chunks
    from slingshot.data.megatron_indexed import write_indexed_batches

    started, cpu = time.perf_counter(), time.process_time()
    with chunk_encoder(tokenizer, workers) as encode:
        stats = write_indexed_batches(prefix, encode(text_chunks(spec)), len(tokenizer))
    return time.perf_counter() - started, time.process_time() - cpu, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=60000)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from slingshot.data.corpora import CorpusSpec, write_jsonl
    from slingshot.data.synthetic import generate_general_text
    from slingshot.data.tokenizer import train_bpe

    tmp = Path(tempfile.mkdtemp(prefix="bench_tokenize_parallel_"))
    docs = list(generate_general_text(args.docs, seed=0, min_sentences=3, max_sentences=12))
    corpus = write_jsonl(tmp / "general.jsonl", docs)
    tokenizer = train_bpe((d["text"] for d in docs[:4000]), vocab_size=args.vocab)
    spec = CorpusSpec(name="general", path=corpus.path, format="jsonl")

    t_serial = t_parallel = cpu_serial = cpu_main = float("inf")
    for _ in range(args.repeats):  # interleaved: a busy moment slows either, not one always
        t, cpu, serial = _run(tokenizer, spec, tmp / "serial", 1)
        t_serial, cpu_serial = min(t_serial, t), min(cpu_serial, cpu)
        t, cpu, parallel = _run(tokenizer, spec, tmp / "parallel", args.workers)
        t_parallel, cpu_main = min(t_parallel, t), min(cpu_main, cpu)
    same = (serial.bin_sha256, serial.idx_sha256) == (parallel.bin_sha256, parallel.idx_sha256)
    assert same, "parallel output differs from serial"

    cpu = platform.processor() or platform.machine()
    print(
        f"device: CPU ({cpu}), {len(os.sched_getaffinity(0))} CPUs in this job's affinity, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'auto')}"
    )
    size_mb = Path(corpus.path).stat().st_size / 1e6
    print(
        f"corpus: {corpus.records} JSONL docs, {size_mb:.1f} MB, vocab {len(tokenizer)}, {serial.tokens} tokens"
    )
    print(f"serial   (1 process):          {serial.tokens / t_serial:>12,.0f} tokens/s  ({t_serial:.2f} s)")
    print(
        f"parallel ({args.workers} worker processes): {serial.tokens / t_parallel:>12,.0f} tokens/s  "
        f"({t_parallel:.2f} s)"
    )
    print(
        f"ratio parallel/serial: {t_serial / t_parallel:.2f}x (goal >= 1.8x on 2 cores); outputs byte-identical"
    )
    # What the machine's other load cannot distort: the CPU time left in the main process
    # (reading, writing, pickling) bounds the speedup on N idle cores (Amdahl).
    bound = cpu_serial / max(cpu_main, cpu_serial / args.workers)
    print(
        f"CPU seconds: serial {cpu_serial:.2f}, parallel main process {cpu_main:.2f} -> speedup bound on "
        f"{args.workers} idle cores {bound:.2f}x; load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
