"""Byte-level BPE tokenizer with reasoning/chat special tokens, as a transformers tokenizer.

Byte-level so any text round-trips exactly (no unknown token); the think and role
markers are single special tokens so a model never has to spell them and the answer
extractor can find them in decoded text. The chat template renders an assistant turn as
``<think>\\n{reasoning}\\n</think>\\n{answer}<|endoftext|>``: the end-of-text token closes
the turn so a model learns to stop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from slingshot.io import atomic_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Order fixes the ids: pad=0, eos=1, then roles and think markers.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, *ROLE_TOKENS, THINK_OPEN, THINK_CLOSE)

# An assistant message may carry its thought in ``reasoning_content`` (the transformers /
# Qwen3 convention) or already contain ``<think>...</think>`` in ``content``.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- if message.get('reasoning_content') is not none and message.get('reasoning_content') != '' -%}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n' -}}"
    "{%- endif -%}"
    "{{- message['content'] + '<|endoftext|>' -}}"
    "{%- else -%}"
    "{{- message['content'] + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def render_turn(prompt: str, response: str) -> str:
    """One user turn and its assistant answer as CHAT_TEMPLATE renders them, minus the
    closing end-of-text (the pretraining packer appends it to every document).

    Reasoning text in pretraining uses this form so that a pretrained model has seen the
    exact prompt format that SFT, RL and evaluation condition on.
    """
    return f"<|user|>\n{prompt}\n<|assistant|>\n{response}"


def _wrap(tok_obj: Tokenizer) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok_obj,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[*ROLE_TOKENS, THINK_OPEN, THINK_CLOSE],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
        padding_side="right",
    )


def train_bpe(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (streamed) and wrap it as ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: decode(encode(x)) == x exactly, no invented leading space.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike[str]) -> Path:
    """``save_pretrained`` into a temp dir beside ``out_dir``, then swap it in whole."""
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (ours or any HF model's), never the network.

    One without a chat template gets ours (:func:`slingshot.data.chat.ensure_chat_template`).
    """
    from transformers import AutoTokenizer

    from slingshot.data.chat import ensure_chat_template

    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:  # many base-model tokenizers ship without one
        tok.pad_token = tok.eos_token
    ensure_chat_template(tok)
    return tok


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids of our special tokens present in ``tokenizer`` (for checks and masks)."""
    vocab = tokenizer.get_vocab()
    return {t: vocab[t] for t in SPECIAL_TOKENS if t in vocab}
