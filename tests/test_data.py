"""Data: the offline standard-library corpus, local .txt/.jsonl/.parquet files through the same
`datasets` path as SmolLM-Corpus, tokenizers, reproducible batches, and clear errors."""

import json

import numpy as np
import pytest
import torch

from nanohybrid.tools import data
from nanohybrid.tools.tokenizer import ByteTokenizer, HuggingFaceTokenizer, load_tokenizer


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def documents(n=120):
    return [f"document {i}: " + "the quick brown fox " * (i % 5 + 1) for i in range(n)]


def write(tmp_path, kind, texts):
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "jsonl":
        (folder / "part.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"text": texts}), folder / "part.parquet")
    else:
        for i, text in enumerate(texts):
            (folder / f"{i:04d}.txt").write_text(text)
    return str(folder)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt"])
def test_local_files_become_train_and_validation_streams(tmp_path, kind):
    texts = documents()
    corpus = data.load_corpus(write(tmp_path, kind, texts), ByteTokenizer(), 10**9, 1, seed=0)
    train, val = np.asarray(corpus["train"]), np.asarray(corpus["val"])
    assert len(val) > 0 and len(train) > 10 * len(val)
    decoded = ByteTokenizer().decode(np.concatenate([train, val])[:200])
    assert decoded.startswith("document ")
    assert (train == ByteTokenizer.eos_id).sum() + (val == ByteTokenizer.eos_id).sum() == len(texts)


def test_streaming_stops_once_the_splits_are_full_and_is_cached(tmp_path, monkeypatch):
    folder = write(tmp_path, "jsonl", documents(400))
    everything = data.load_corpus(folder, ByteTokenizer(), 10**9, 1, seed=0)
    corpus = data.load_corpus(folder, ByteTokenizer(), 2000, 1, seed=0)
    assert 2000 <= len(corpus["train"]) < len(everything["train"]) / 2 and len(corpus["val"]) >= 1
    assert len(data.load_corpus(folder, ByteTokenizer(), 2000, 300, seed=0)["val"]) >= 300  # reads on for validation
    monkeypatch.setattr(data, "stream_documents", lambda *args: pytest.fail("the cache was not used"))
    again = data.load_corpus(folder, ByteTokenizer(), 2000, 1, seed=0)
    assert np.array_equal(again["train"], corpus["train"])


def test_embedded_corpus_reads_the_standard_library_and_splits_by_file(tmp_path, monkeypatch):
    root = tmp_path / "stdlib"
    (root / "site-packages" / "third_party").mkdir(parents=True)
    (root / "site-packages" / "third_party" / "x.py").write_text("NOT STDLIB")
    for i in range(300):
        (root / f"module_{i}.py").write_text(f'"""Module {i}."""\n')
    monkeypatch.setattr(data.sysconfig, "get_paths", lambda: {"stdlib": str(root)})
    splits = data.stdlib_documents()
    assert len(splits["train"]) + len(splits["val"]) == 300 and splits["val"]
    assert not any("NOT STDLIB" in text for text in splits["train"] + splits["val"])
    corpus = data.embedded_corpus(ByteTokenizer())
    assert len(corpus["train"]) + len(corpus["val"]) == sum(len(f'"""Module {i}."""\n') + 1 for i in range(300))


def test_batches_are_reproducible_windows_with_shifted_targets():
    tokens = np.arange(1000, dtype=np.uint32)
    inputs, targets = data.get_batch(tokens, 4, 16, seed=3, step=7)
    again, _ = data.get_batch(tokens, 4, 16, seed=3, step=7)
    other, _ = data.get_batch(tokens, 4, 16, seed=3, step=8)
    assert inputs.shape == (4, 16) and torch.equal(inputs, again) and not torch.equal(inputs, other)
    assert torch.equal(targets, inputs + 1)


def test_hugging_face_tokenizer_from_a_local_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(documents(), trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "<|endoftext|>"]))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert isinstance(loaded, HuggingFaceTokenizer) and loaded.eos_id == 1 and loaded.vocab_size <= 80
    assert loaded.decode(loaded.encode("the quick fox")).replace(" ", "") == "thequickfox"


@pytest.mark.parametrize("spec, message", [
    ("no/such/folder", "no .txt, .jsonl or .parquet files there"),
    ("smollm:wikipedia", "unknown SmolLM-Corpus subset 'wikipedia'"),
])
def test_bad_data_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        data.load_corpus(spec, ByteTokenizer(), 100, 10, seed=0)


def test_mixed_file_kinds_and_missing_text_column_are_errors(tmp_path):
    folder = write(tmp_path, "jsonl", documents(10))
    (tmp_path / "jsonl" / "extra.txt").write_text("x")
    with pytest.raises(ValueError, match="mixes file kinds"):
        data.load_corpus(folder, ByteTokenizer(), 100, 10, seed=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "rows.jsonl").write_text(json.dumps({"content": "no text column"}) + "\n")
    with pytest.raises(ValueError, match="rows have no `text` column"):
        data.load_corpus(str(tmp_path / "other"), ByteTokenizer(), 100, 10, seed=0)


def test_too_little_text_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="too little text"):
        data.load_corpus(write(tmp_path, "jsonl", ["just one document"]), ByteTokenizer(), 100, 10, seed=0)


def test_smollm_offline_says_what_to_do(monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    with pytest.raises(ValueError, match="needs the network. Offline, use --data=embedded or --data=path/to/files"):
        data.load_corpus("smollm:cosmopedia-v2", ByteTokenizer(), 100, 10, seed=0)


def test_smollm_streams_each_subset_and_mixes_them_by_weight(monkeypatch):
    import datasets
    requested = []

    def fake_hub(name, subset, split, streaming):
        requested.append((name, subset, split, streaming))
        return datasets.IterableDataset.from_generator(lambda: ({"text": f"{subset} {i}"} for i in range(200)))

    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    texts = [text for _, text in zip(range(300), data.stream_documents("smollm:cosmopedia-v2=0.75,fineweb-edu-dedup=0.25", 0))]
    assert requested == [(data.SMOLLM, "cosmopedia-v2", "train", True), (data.SMOLLM, "fineweb-edu-dedup", "train", True)]
    share = sum(text.startswith("cosmopedia-v2") for text in texts[:200]) / 200
    assert 0.65 < share < 0.85
