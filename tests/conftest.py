"""Fixtures of the data and training-script tests (test_data.py, test_train.py, test_train_failures.py)."""

import json

import pytest


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A tokenized-corpus cache of the test's own, so that no run reads another's."""
    monkeypatch.setenv("NANOHYBRID_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    """A jsonl corpus of 300 short documents in SmolLM-Corpus shape (text plus other columns)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = [json.dumps({"text": f"def function_{i}(x):\n    return x * {i} + {i % 7}\n", "id": i, "token_count": 20})
             for i in range(300)]
    (folder / "shard.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)
