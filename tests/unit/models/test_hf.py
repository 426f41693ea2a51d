"""HF model directories, the hand-off format between stages: checked before loading."""

import pytest
from tiny_hf import tiny_llama

from slingshot.models.hf import ModelDirError, check_model_dir, load_model_and_tokenizer, save_model_dir


def test_model_dir_checks_name_what_is_missing(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="has no weights"):
        check_model_dir(tmp_path / "m")


def test_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    from slingshot.data.tokenizer import train_bpe

    tokenizer = train_bpe(["hello world " * 50, "some more text here"] * 20, vocab_size=300, min_frequency=1)
    save_model_dir(tiny_llama(vocab=64), tokenizer, tmp_path / "m")
    with pytest.raises(ModelDirError, match="do not belong together"):
        load_model_and_tokenizer(tmp_path / "m")
