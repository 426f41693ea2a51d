"""Benchmark: HF -> Megatron-Core import of a ~100M-parameter Qwen3 (random weights, built
from its config here: nothing downloaded).

Times, each the best of ``--repeats``: reading the safetensors directory
(``read_hf_state_dict``: safetensors memory-maps, so the bytes are read when first copied,
inside the load), converting to the full mcore state dict and cutting the TP
shards (``hf_to_mcore_state_dict`` + ``split_tp_shards``), and the whole
``load_hf_into_gpt`` into a built TP=1 GPTModel (conversion + copy into the parameters).
Building the model itself (Megatron's init) is timed apart: it is not part of the import.
The import is checked exact (the HF export of the loaded model equals the original).

Usage: python bench/bench_hf_import.py [--layers 12] [--hidden 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path


def _best(fn, repeats: int) -> tuple[float, object]:  # noqa: ANN001
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tp", type=int, default=2, help="TP size the shards are cut for (conversion timing)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from slingshot.models.export import (
        gather_state_dicts_for_export,
        mcore_to_hf_state_dict,
        merge_state_dicts,
    )
    from slingshot.models.hf_import import (
        gpt_config_from_hf,
        hf_to_mcore_state_dict,
        load_hf_into_gpt,
        read_hf_state_dict,
        split_tp_shards,
    )
    from slingshot.models.megatron_gpt import build_gpt, destroy_model_parallel, init_model_parallel

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    hf_dir = Path(tempfile.mkdtemp(prefix="bench_hf_import_"))
    original = Qwen3ForCausalLM(config)
    original.save_pretrained(hf_dir)
    n_params = sum(p.numel() for p in original.parameters())
    size_mb = (hf_dir / "model.safetensors").stat().st_size / 1e6

    t_read, hf = _best(lambda: read_hf_state_dict(hf_dir), args.repeats)
    cfg = gpt_config_from_hf(config, seq_length=2048)
    t_convert, _ = _best(
        lambda: split_tp_shards(hf_to_mcore_state_dict(hf, cfg, args.tp), args.tp), args.repeats
    )
    init_model_parallel(1, 1)
    try:
        t_build, model = _best(lambda: build_gpt(cfg), 1)
        t_load, _ = _best(lambda: load_hf_into_gpt(model, hf, cfg), args.repeats)
        back = mcore_to_hf_state_dict(merge_state_dicts(gather_state_dicts_for_export(model)), cfg)
        expected = original.state_dict()
        assert all(torch.equal(back[k], expected[k]) for k in back), "import is not exact"
    finally:
        destroy_model_parallel()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    print(f"device: {device}, {len(os.sched_getaffinity(0))} CPUs, torch threads {torch.get_num_threads()}")
    print(
        f"model: Qwen3 {args.layers} layers x {args.hidden}, vocab {args.vocab}, tied: {n_params / 1e6:.1f} M params, "
        f"{size_mb:.0f} MB fp32 safetensors"
    )
    print(f"read safetensors:                 {t_read:.3f} s")
    print(f"convert + cut TP={args.tp} shards:        {t_convert:.3f} s")
    print(f"load_hf_into_gpt (TP=1, all):     {t_load:.3f} s  ({n_params / t_load / 1e6:.0f} M params/s)")
    print(
        f"import total (read + load):       {t_read + t_load:.3f} s   [build_gpt init, not import: {t_build:.3f} s]"
    )
    print("exact: the loaded model's HF export equals the original tensors")


if __name__ == "__main__":
    main()
