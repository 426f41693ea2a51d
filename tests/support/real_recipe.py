"""Inputs for the shipped real recipe (workflow/config/recipes/qwen3-1.7b-rlp-sft-prorl.yaml),
written small: tiny random-weight Qwen3 model directories built from a transformers
``Qwen3Config`` (no download) and tiny benchmark files in the layouts the recipe names."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "workflow" / "config" / "recipes" / "qwen3-1.7b-rlp-sft-prorl.yaml"
MODELS = ("Qwen3-1.7B-Base", "Qwen3-32B")  # the RLP start and the synthesis generator

# What each benchmark file holds: (recipe name, gold answers in file order).
BENCHMARK_ANSWERS = {
    "gsm8k": ["7", "1250"],
    "math500": ["\\frac{1}{2}", "\\sqrt{2}"],
    "aime24": ["33", "204"],
}


def login_node_host() -> str:
    """A name for this machine that the recipe's other-host compute nodes could reach: its host
    name where that resolves to a non-loopback address, else its first non-loopback interface
    address (a Debian or container host often maps its own name to 127.0.x.1 in /etc/hosts, and
    the recipe refuses a loopback tracking URI on a multi-host site)."""
    import ipaddress

    import psutil

    from slingshot.tracking import is_loopback

    name = socket.gethostname()
    if not is_loopback(f"http://{name}:5000"):
        return name
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    raise RuntimeError(f"this machine has no non-loopback address ('{name}' resolves to loopback)")


def write_tiny_qwen3(out: Path) -> Path:
    """A 2-layer Qwen3 (QK-norm, tied embeddings) with a 64-token word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from slingshot.models.hf import save_model_dir

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", *[f"w{i}" for i in range(60)]]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        eos_token_id=0,
    )
    return save_model_dir(Qwen3ForCausalLM(config), tokenizer, out)


def write_recipe_data(data: Path) -> None:
    """The math prompt set (JSONL) and the benchmarks: GSM8K as Parquet, MATH-500 as JSONL,
    AIME 2024 as an HF DatasetDict saved to disk."""
    from datasets import Dataset, DatasetDict

    from slingshot.data.corpora import write_parquet

    data.mkdir(parents=True, exist_ok=True)
    (data / "math-prompts.jsonl").write_text('{"problem": "1+1?", "answer": 2}\n')
    (data / "gsm8k").mkdir(exist_ok=True)
    write_parquet(
        data / "gsm8k" / "test.parquet",
        [
            {
                "question": "Ann has 3 pens and buys 4 more. How many pens?",
                "answer": "3+4=<<3+4=7>>7\n#### 7",
            },
            {"question": "A bike costs 1,000 and a bell 250. Total?", "answer": "1,250 in all\n#### 1,250"},
        ],
    )
    (data / "MATH-500").mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "problem": "What is half of one?",
            "solution": "It is \\boxed{\\frac{1}{2}}.",
            "answer": "\\frac{1}{2}",
        },
        {"problem": "Simplify $\\sqrt{8}/2$.", "solution": "\\boxed{\\sqrt{2}}", "answer": "\\sqrt{2}"},
    ]
    (data / "MATH-500" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    aime = {"ID": ["2024-I-1", "2024-I-2"], "Problem": ["Find x.", "Find y."], "Answer": [33, 204]}
    DatasetDict({"train": Dataset.from_dict(aime)}).save_to_disk(str(data / "AIME_2024"))


def write_recipe_inputs(root: Path) -> dict[str, str]:
    """Every input the recipe names, under ``root``; returns the environment it reads them from."""
    first = write_tiny_qwen3(root / "models" / MODELS[0])
    for name in MODELS[1:]:
        shutil.copytree(first, root / "models" / name)
    write_recipe_data(root / "data")
    # The example site, with this environment as the jobs' Python (its /shared/envs path is a
    # placeholder, refused by name where it does not exist).
    site = yaml.safe_load((REPO / "cluster" / "example-site.yaml").read_text())
    site["python"] = sys.executable
    (root / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    credentials = root / "mlflow-credentials"
    credentials.write_text("MLFLOW_TRACKING_USERNAME=slingshot\nMLFLOW_TRACKING_PASSWORD=recipe-test\n")
    credentials.chmod(0o600)
    return {
        "SLINGSHOT_MODELS": str(root / "models"),
        "SLINGSHOT_DATA": str(root / "data"),
        "SLINGSHOT_SITE": str(root / "site.yaml"),
        "SLINGSHOT_SITE_DIR": str(REPO / "cluster"),
        "SLINGSHOT_TRACKING_URI": f"http://{login_node_host()}:5000",
        "SLINGSHOT_TRACKING_CREDENTIALS": str(credentials),
    }
