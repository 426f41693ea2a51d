"""Hugging Face model directories: the hand-off format between stages.

Loading checks the directory first (clear errors for missing files or a tokenizer that
does not fit the model); saving writes a temp directory and swaps it in whole, so a
reader never sees half a model. The memory switches of the training stages (activation
checkpointing, the frozen reference/EMA copy's placement) are here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Literal

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


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer in the backward pass instead of keeping its activations.

    Non-reentrant checkpointing (works with frozen inputs and under FSDP2). Generation (no
    gradient) runs the layers as they are, KV cache included. Transformers only
    checkpoints a layer that is in training mode: call :func:`eval_mode_keeping_checkpoints`
    for a model trained in eval mode (RLP: no dropout).
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def eval_mode_keeping_checkpoints(model: torch.nn.Module) -> None:
    """``model.eval()``, but the checkpointed decoder layers keep ``training=True`` (the flag
    transformers checks), while their submodules (attention, dropout) stay in eval mode."""
    model.eval()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.training = True


FrozenPlacement = Literal["device", "bf16", "cpu"]


def frozen_copy(model: torch.nn.Module, placement: FrozenPlacement) -> torch.nn.Module:
    """A frozen (no-grad, eval) deep copy of ``model``: fp32 where the model is (``device``),
    cast to bf16 there (``bf16``), or fp32 in host memory (``cpu``; see :func:`resident`)."""
    copy = deepcopy(model).eval().requires_grad_(False)
    if placement == "bf16":
        copy.to(torch.bfloat16)
    elif placement == "cpu":
        copy.to("cpu")
    return copy


@contextmanager
def resident(model: torch.nn.Module | None, device: torch.device | str) -> Iterator[None]:
    """Within the block ``model`` is on ``device``; a model kept elsewhere (a CPU-offloaded
    frozen copy) is moved there for the block and back after it. None: nothing to do."""
    if model is None:
        yield
        return
    home = next(model.parameters()).device
    target = torch.device(device)
    moved = home.type != target.type
    if moved:
        model.to(target)
    try:
        yield
    finally:
        if moved:
            model.to(home)
