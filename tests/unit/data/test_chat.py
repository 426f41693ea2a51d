"""The chat format: a model's own template (Qwen, Llama-3) renders prompts and its end-of-turn
token stops generation; a tokenizer without a template gets the tiny recipe's format."""

from __future__ import annotations

import pytest
import torch
from chat_tokenizers import LLAMA3_TEMPLATE, bpe, qwen_tokenizer

from slingshot.data.chat import ChatFormat, end_of_turn_ids, prompt_token_ids, render_prompt, stop_token_ids
from slingshot.data.tokenizer import CHAT_TEMPLATE


@pytest.fixture(scope="module")
def qwen():  # noqa: ANN201
    return qwen_tokenizer()


def test_qwen_template_renders_the_prompt_and_stops_on_im_end(qwen):
    text = render_prompt(qwen, "2+2?")
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = prompt_token_ids(qwen, "2+2?")
    assert ids[0] == qwen.convert_tokens_to_ids("<|im_start|>") and qwen.decode(ids) == text
    eos, im_end = qwen.eos_token_id, qwen.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(qwen) == [im_end]
    assert stop_token_ids(qwen) == [eos, im_end]
    # chat.stop_tokens adds to them; a token that is not one token of the vocabulary is refused.
    start = qwen.convert_tokens_to_ids("<|im_start|>")
    assert stop_token_ids(qwen, ["<|im_start|>", "<|im_end|>"]) == [eos, im_end, start]
    with pytest.raises(ValueError, match=r"chat.stop_tokens: '<\|nope\|>' is not a single token"):
        stop_token_ids(qwen, ["<|nope|>"])


def test_llama3_template_ends_a_turn_with_eot_id():
    tok = bpe(
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|end_of_text|>",
        LLAMA3_TEMPLATE,
        bos="<|begin_of_text|>",
    )
    assert render_prompt(tok, "hi") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert stop_token_ids(tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]


def test_a_tokenizer_without_a_template_gets_the_tiny_format_closed_by_its_own_eos():
    tok = bpe(["<|end_of_text|>"], "<|end_of_text|>", None)
    assert render_prompt(tok, "hi") == "<|user|>\nhi\n<|assistant|>\n"
    assert tok.chat_template == CHAT_TEMPLATE.replace("'<|endoftext|>'", "'<|end_of_text|>'")
    assert stop_token_ids(tok) == [tok.eos_token_id]  # the turn ends with EOS: nothing else to stop on


def test_the_tiny_tokenizer_keeps_its_format_and_stops_on_eos_only(small_tokenizer):
    before = small_tokenizer.chat_template
    assert render_prompt(small_tokenizer, "1+1") == "<|user|>\n1+1\n<|assistant|>\n"
    assert small_tokenizer.chat_template == before
    fmt = ChatFormat.of(small_tokenizer)
    assert fmt.stop_ids == [small_tokenizer.eos_token_id] and fmt.think_tags == ("<think>", "</think>")


def test_generation_stops_on_im_end_not_only_on_eos(qwen):
    """A tiny Llama taught one Qwen-format answer ends its turn with <|im_end|>, never EOS:
    with the template's stop ids the rollout finishes there; with EOS alone it runs on."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from slingshot.rollout.hf import HFRollout

    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "four"}]
    full = qwen(qwen.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    prompt = prompt_token_ids(qwen, "2+2?")
    assert full[: len(prompt)] == prompt
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(qwen),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.tensor([full])
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    im_end = qwen.convert_tokens_to_ids("<|im_end|>")
    answer = full[len(prompt) : full.index(im_end, len(prompt))]

    chat = HFRollout(model, qwen.pad_token_id, stop_token_ids(qwen)).generate([prompt], 1, 20, 0.0)[0][0]
    assert chat.finished and chat.completion_ids == [*answer, im_end]
    assert qwen.decode(chat.completion_ids) == "four<|im_end|>"
    eos_only = HFRollout(model, qwen.pad_token_id, [qwen.eos_token_id]).generate([prompt], 1, 20, 0.0)[0][0]
    assert len(eos_only.completion_ids) > len(answer) + 1  # ran past the end of the turn


def test_sft_labels_the_assistant_turn_of_the_model_template_through_its_end_of_turn(qwen):
    """SFT tokenizes through the same template: the prompt is render_prompt's exactly and the
    loss covers the answer and the <|im_end|> that ends the turn (what teaches stopping)."""
    from slingshot.data.packing import IGNORE_INDEX, tokenize_sft

    example = tokenize_sft(qwen, "2+2?", "four")
    prompt = prompt_token_ids(qwen, "2+2?")
    assert example.input_ids[: len(prompt)] == prompt
    supervised = [t for t in example.labels if t != IGNORE_INDEX]
    assert qwen.decode(supervised) == "four<|im_end|>\n"
