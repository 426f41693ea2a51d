"""Hugging Face model directories: the hand-off format between stages.

Loading checks the directory first (clear errors for missing files or a tokenizer that
does not fit the model); saving writes a temp directory and swaps it in whole, so a
reader never sees half a model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slingshot.io import atomic_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ModelDirError(ValueError):
    pass


def check_model_dir(path: str | os.PathLike[str], need_tokenizer: bool = True) -> Path:
    """Raise ModelDirError naming what is missing from an HF causal-LM directory."""
    p = Path(path)
    if not p.is_dir():
        raise ModelDirError(f"model directory '{p}' does not exist")
    if not (p / "config.json").is_file():
        raise ModelDirError(f"model directory '{p}' has no config.json")
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise ModelDirError(
            f"model directory '{p}' has no weights (expected one of {', '.join(WEIGHT_FILES)})"
        )
    if need_tokenizer and not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ModelDirError(f"model directory '{p}' has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    return p


def load_causal_lm(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    check_model_dir(path, need_tokenizer=False)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return model.to(device)


def load_model_and_tokenizer(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from slingshot.data.tokenizer import load_tokenizer

    check_model_dir(path)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype, device)
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        raise ModelDirError(
            f"tokenizer in '{path}' has {len(tokenizer)} tokens but the model's embedding has {embeddings} rows: "
            "they do not belong together"
        )
    return model, tokenizer


def save_model_dir(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | os.PathLike[str]
) -> Path:
    """save_pretrained (safetensors) into a temp dir beside ``out_dir``, then swap it in whole."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
