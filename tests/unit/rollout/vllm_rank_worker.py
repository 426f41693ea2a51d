"""One rank of the two-rank vLLM test (run by torch.distributed.run): inside a gloo process
group, as RLP and evaluation run on several GPUs, each rank starts its own engine, generates
greedily for its own prompt before and after a weight push, and writes whether that equals HF."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(out_dir: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from slingshot.config import RolloutConfig
    from slingshot.rollout.hf import HFRollout
    from slingshot.rollout.vllm import VLLMRollout

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg).eval()
    backend = VLLMRollout(model, [], RolloutConfig(backend="vllm"), stage="two-ranks")
    prompt = [[1 + rank, 2, 3, 40 + rank]]
    equal = []
    for _ in range(2):
        ours = backend.generate(prompt, n=1, max_new_tokens=10, temperature=0.0)[0][0].completion_ids
        hf = HFRollout(model, 0, []).generate(prompt, 1, 10, 0.0)[0][0].completion_ids
        equal.append(ours == hf)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        backend.sync_weights(model, step=1)
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps({"equal": equal, "version": backend.weight_version})
    )
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
