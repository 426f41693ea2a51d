"""Tokenizer: byte-level round trip, special tokens as single ids, save/load, chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from slingshot.data.tokenizer import (
    EOS,
    PAD,
    SPECIAL_TOKENS,
    THINK_CLOSE,
    THINK_OPEN,
    load_tokenizer,
    render_turn,
    save_tokenizer,
    special_token_ids,
)

TEXTS = [
    "Ana put 3 red apples in the market.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "ünïcödé — 日本語 😀 and bytes \x00\x7f",
    f"<|user|>\nWhat is 2+3?\n<|assistant|>\n{THINK_OPEN}\n2 + 3 = 5\n{THINK_CLOSE}\n\\boxed{{5}}{EOS}",
    f"{THINK_OPEN}{THINK_CLOSE}{PAD}{PAD}x",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(small_tokenizer, text: str) -> None:  # noqa: ANN001
    ids = small_tokenizer.encode(text, add_special_tokens=False)
    assert small_tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(small_tokenizer) -> None:  # noqa: ANN001
    ids = special_token_ids(small_tokenizer)
    assert list(ids) == list(SPECIAL_TOKENS)
    assert ids[PAD] == 0 and ids[EOS] == 1
    assert small_tokenizer.pad_token_id == 0 and small_tokenizer.eos_token_id == 1
    for tok, i in ids.items():
        assert small_tokenizer.encode(f"a {tok} b", add_special_tokens=False).count(i) == 1
        assert small_tokenizer.encode(tok, add_special_tokens=False) == [i]
    # Literal text that merely looks similar is not the special token.
    assert len(small_tokenizer.encode("<thin k>", add_special_tokens=False)) > 1


def test_save_and_load_round_trip(small_tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    out = save_tokenizer(small_tokenizer, tmp_path / "tok")
    assert (out / "tokenizer.json").exists()
    save_tokenizer(small_tokenizer, tmp_path / "tok")  # overwrite is fine
    loaded = load_tokenizer(out)
    for text in TEXTS:
        ids = small_tokenizer.encode(text, add_special_tokens=False)
        assert loaded.encode(text, add_special_tokens=False) == ids
        assert loaded.decode(ids) == text
    assert loaded.chat_template == small_tokenizer.chat_template
    assert special_token_ids(loaded) == special_token_ids(small_tokenizer)


def test_load_missing_dir_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope")


def test_chat_template_renders_think_then_answer(small_tokenizer) -> None:  # noqa: ANN001
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "\\boxed{5}", "reasoning_content": "2 + 3 = 5"},
    ]
    full = small_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert full == (
        "<|system|>\nBe brief.\n<|user|>\nWhat is 2+3?\n<|assistant|>\n"
        "<think>\n2 + 3 = 5\n</think>\n\\boxed{5}<|endoftext|>"
    )
    prompt = small_tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nWhat is 2+3?\n<|assistant|>\n"
    # Content that already carries the thought is rendered as is.
    inline = [msgs[1], {"role": "assistant", "content": "<think>\nx\n</think>\n\\boxed{5}"}]
    assert small_tokenizer.apply_chat_template(inline, tokenize=False).endswith(
        "<|assistant|>\n<think>\nx\n</think>\n\\boxed{5}<|endoftext|>"
    )


def test_pretraining_turn_is_the_chat_template_without_its_end_of_text(small_tokenizer) -> None:  # noqa: ANN001
    msgs = [
        {"role": "user", "content": "Calculate 3 + 4."},
        {"role": "assistant", "content": "<think>\n3 + 4\n= 7\n</think>\n\\boxed{7}"},
    ]
    templated = small_tokenizer.apply_chat_template(msgs, tokenize=False)
    turn = render_turn(msgs[0]["content"], msgs[1]["content"])
    assert templated == turn + "<|endoftext|>"
    # What evaluation prompts with is a prefix of what pretraining saw.
    prompt = small_tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert turn.startswith(prompt)
