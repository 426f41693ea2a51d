"""The tracking journal without a server: records wait while sends fail to connect, go in
order exactly once when they succeed, and a record the server refuses is raised once."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException, RestException

from slingshot.tracking import journal as journal_module
from slingshot.tracking.journal import Journal


def test_records_wait_out_an_outage_and_go_in_order_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(journal_module, "RETRY_EVERY_S", 0.0)
    sent: list[int] = []
    server_up = False

    def send(record):
        if not server_up:
            raise MlflowException("API request to http://x/api failed with exception Connection refused")
        sent.append(record["n"])

    journal = Journal(tmp_path / "mlflow_journal.jsonl")
    for n in range(3):
        journal.append({"op": "batch", "n": n, "metrics": [["loss", 1.0 / (n + 1), 1000 + n, n + 1]]})
        assert journal.flush(send, probe=lambda: None) == 0
    assert journal.pending == 3 and "tracking server unreachable" in capsys.readouterr().out
    server_up = True
    journal.append({"op": "batch", "n": 3})
    assert journal.flush(send, probe=lambda: None) == 4
    assert sent == [0, 1, 2, 3] and journal.pending == 0
    assert "back after" in capsys.readouterr().out
    # A new job of the stage reads the same journal: nothing is pending, nothing resent.
    again = Journal(tmp_path / "mlflow_journal.jsonl")
    assert again.pending == 0 and again.metric_floor() == {"loss": 3}
    assert again.flush(send, probe=lambda: None) == 0 and sent == [0, 1, 2, 3]


def test_a_refused_record_is_raised_once_and_does_not_block_the_rest(tmp_path):
    def send(record):
        if record["n"] == 0:
            raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "no"})

    journal = Journal(tmp_path / "mlflow_journal.jsonl")
    journal.append({"op": "batch", "n": 0})
    journal.append({"op": "batch", "n": 1})
    with pytest.raises(RestException):
        journal.flush(send, probe=lambda: None)
    assert Journal(journal.path).pending == 1
    assert journal.flush(send, probe=lambda: None) == 1
