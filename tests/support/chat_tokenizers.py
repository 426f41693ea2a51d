"""Tiny tokenizers with real chat templates (Qwen2/2.5, Llama-3), trained here: no download."""

from __future__ import annotations

# Qwen2/Qwen2.5's template as shipped in their tokenizer_config.json (system turn by default).
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
TEXTS = ["what is two plus two? four. the answer is four.", "user assistant system helpful"] * 20


def bpe(specials: list[str], eos: str, template: str | None, bos: str | None = None):  # noqa: ANN201
    """A tiny byte-level BPE (trained here, no download) with ``specials`` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=eos, bos_token=bos, chat_template=template
    )


def qwen_tokenizer():  # noqa: ANN201
    return bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|endoftext|>", QWEN2_TEMPLATE)
