"""export_to_hf writes a loadable HF directory (safetensors, config, tokenizer) from mcore tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from slingshot.models.export import export_to_hf

from .test_tp_shards import CFG, TP, _full, _shard


def _tokenizer(n: int) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(n - 3)}}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def test_export_dir_with_tokenizer_loads_back(tmp_path: Path) -> None:
    shards = [_shard(_full(), r) for r in range(TP)]
    out = export_to_hf(shards, CFG, tmp_path / "hf", tokenizer=_tokenizer(CFG.vocab_size))
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.eos_token_id == tok.eos_token_id == 2 and model.config.bos_token_id == 1
    assert model.get_input_embeddings().weight.shape == (CFG.vocab_size, CFG.hidden_size)
    ids = torch.tensor([tok("w1 w2 w3")["input_ids"]])
    assert model(ids).logits.shape == (1, 3, CFG.vocab_size)


def test_bf16_export(tmp_path: Path) -> None:
    out = export_to_hf([_shard(_full(), r) for r in range(TP)], CFG, tmp_path / "hf", dtype=torch.bfloat16)
    assert AutoModelForCausalLM.from_pretrained(out).config.dtype == torch.bfloat16


def test_tokenizer_larger_than_vocab_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer has"):
        export_to_hf(
            [_shard(_full(), r) for r in range(TP)], CFG, tmp_path, tokenizer=_tokenizer(CFG.vocab_size + 1)
        )
