"""Shared fixtures for the data tests: one small trained tokenizer per session."""

from __future__ import annotations

import pytest

from slingshot.data.synthetic import generate_general_text
from slingshot.data.tasks import SplitSizes, make_splits
from slingshot.data.teacher import ProceduralTeacher


@pytest.fixture(scope="session")
def small_tokenizer():  # noqa: ANN201 - a transformers tokenizer
    from slingshot.data.synthetic import reasoning_records
    from slingshot.data.tokenizer import train_bpe

    entries = make_splits(
        ["gcd", "chain_sum", "spell_backward"], SplitSizes(train=50, validation=1, test=1), 0
    )
    texts = [d["text"] for d in generate_general_text(400, seed=0)]
    texts += [r["text"] for r in reasoning_records(entries["train"], ProceduralTeacher())]
    return train_bpe(texts, vocab_size=600)
