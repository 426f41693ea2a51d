"""The chat format every stage renders prompts with and stops generation on (one place).

* rendering: the tokenizer's own chat template (Qwen's ``<|im_start|>``, Llama-3's
  headers...) through ``apply_chat_template``; a tokenizer without one gets the tiny
  recipe's format (:data:`slingshot.data.tokenizer.CHAT_TEMPLATE`, its turn closed by the
  tokenizer's own EOS) installed when it is loaded, so SFT's packing, RL and evaluation
  all see one template;
* stopping: EOS, plus the token the template closes an assistant turn with (found by
  rendering one turn, so no list of model names is kept here), plus ``chat.stop_tokens``;
* thinking tags: ``chat.think_open`` / ``chat.think_close`` (``<think>``/``</think>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slingshot.data.tokenizer import CHAT_TEMPLATE, EOS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from slingshot.config import ChatConfig

_SENTINEL = "\x00slingshot-turn-end\x00"


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a chat template the tiny recipe's one, closed by its own EOS."""
    if not hasattr(tokenizer, "chat_template") or tokenizer.chat_template:
        return  # it has one (or is no transformers tokenizer at all)
    eos = getattr(tokenizer, "eos_token", None) or EOS
    tokenizer.chat_template = CHAT_TEMPLATE.replace(f"'{EOS}'", repr(eos))


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """A user turn (after an optional system turn) plus the assistant header, as text."""
    ensure_chat_template(tokenizer)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of :func:`render_prompt`; the template already holds every special token,
    so the tokenizer adds none (no second BOS)."""
    return list(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {i for i, tok in decoder.items() if getattr(tok, "special", False)}


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special token the template writes right after an assistant message (empty if none).

    Qwen's template closes a turn with ``<|im_end|>``, Llama-3's with ``<|eot_id|>``, the
    tiny recipe's with EOS: rendering one turn finds it without knowing the model.
    """
    ensure_chat_template(tokenizer)
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if _SENTINEL not in text:
        return []
    tail = text.rsplit(_SENTINEL, 1)[1]
    ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
    return ids[:1] if ids and ids[0] in _special_ids(tokenizer) else []


def turn_markers(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str] | None:
    """(text before a user message, text after it up to the assistant's answer), found by
    rendering one user turn with the generation prompt: ``("<|user|>\\n", "\\n<|assistant|>\\n")``
    for the tiny recipe. None if the template does not show the message verbatim."""
    ensure_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    if text.count(_SENTINEL) != 1:
        return None
    before, after = text.split(_SENTINEL)
    return (before, after) if before and after else None


def single_token_id(tokenizer: PreTrainedTokenizerBase, token: str, key: str) -> int:
    """The id of ``token``, which must be one token of the vocabulary; ``key`` names the setting."""
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise ValueError(f"{key}: {token!r} is not a single token of the model's tokenizer")
    return int(vocab[token])


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, extra: list[str] | None = None) -> list[int]:
    """EOS, the template's end-of-turn token and ``extra`` (``chat.stop_tokens``), EOS first."""
    ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    ids += end_of_turn_ids(tokenizer)
    ids += [single_token_id(tokenizer, t, "chat.stop_tokens") for t in extra or []]
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class ChatFormat:
    """The resolved chat format of one model: stop ids and thinking tags."""

    stop_ids: list[int]
    think_open: str = "<think>"
    think_close: str = "</think>"

    @property
    def think_tags(self) -> tuple[str, str]:
        return self.think_open, self.think_close

    @classmethod
    def of(cls, tokenizer: Any, cfg: ChatConfig | None = None) -> ChatFormat:
        if cfg is None:
            return cls(stop_token_ids(tokenizer))
        return cls(stop_token_ids(tokenizer, cfg.stop_tokens), cfg.think_open, cfg.think_close)
