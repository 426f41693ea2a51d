from pathlib import Path

from slingshot.data.tasks import load_entries
from slingshot.data.tokenizer import load_tokenizer


def test_data_stage_outputs_what_downstream_reads(small_data):
    out = small_data["outputs"]
    tokenizer = load_tokenizer(out["tokenizer_dir"])
    assert "<think>" in tokenizer.get_vocab()
    train = load_entries(out["tasks_train"])
    test = load_entries(out["tasks_test"])
    assert {e["hash"] for e in train}.isdisjoint({e["hash"] for e in test})
    for name in ("general", "reasoning"):
        assert Path(out[f"indexed_{name}"] + ".bin").is_file()
        assert small_data["metrics"][f"tokens_{name}"] > 1000
