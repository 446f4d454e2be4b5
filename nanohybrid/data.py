"""Training data: the offline default corpus, tokenized once and cached, and reproducible batches.

The offline default is a real corpus every machine that runs this project already has: the Python
standard library's own source and docstrings (PSF licence), read from the running interpreter's
`sysconfig` paths. It resembles the code part of SmolLM-Corpus (python-edu). Files are split into
train and validation by a hash of their path, so the split is the same on every machine and run.

Batches are random windows of the token stream, drawn from a generator seeded by (seed, step): batch
number `step` is the same whenever it is asked for, so a resumed run sees exactly the data it would have.

Shape glossary
  b batch   l sequence length
"""

import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

VALIDATION_SHARE = 50  # one file in 50 goes to validation


def cache_dir() -> Path:
    return Path(os.environ.get("NANOHYBRID_CACHE", Path.home() / ".cache" / "nanohybrid"))


def stdlib_documents() -> dict[str, list[str]]:
    """{"train": [...], "val": [...]}: the text of every .py file of the standard library (no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    splits = {"train": [], "val": []}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if "site-packages" in relative or "dist-packages" in relative:
            continue
        digest = int(hashlib.sha1(relative.encode()).hexdigest(), 16)
        text = path.read_text(encoding="utf-8", errors="replace")
        splits["val" if digest % VALIDATION_SHARE == 0 else "train"].append(text)
    if not splits["train"] or not splits["val"]:
        raise RuntimeError(f"no Python standard library sources found under {root}; pass --data with your own files")
    return splits


def tokenize_documents(documents: list[str], tokenizer) -> np.ndarray:
    """Documents joined by the end-of-text token, as one uint32 stream."""
    ids = []
    for text in documents:
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.eos_id)
    return np.asarray(ids, dtype=np.uint32)


def embedded_corpus(tokenizer) -> dict[str, np.ndarray]:
    """The standard-library corpus as token streams, tokenized on the first call and cached on disk."""
    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha1(f"{root}|{tokenizer.name}|{VALIDATION_SHARE}".encode()).hexdigest()[:12]
    paths = {split: cache_dir() / f"stdlib-{key}-{split}.npy" for split in ("train", "val")}
    if not all(path.exists() for path in paths.values()):
        paths["train"].parent.mkdir(parents=True, exist_ok=True)
        for split, documents in stdlib_documents().items():
            temporary = paths[split].with_suffix(".tmp.npy")
            np.save(temporary, tokenize_documents(documents, tokenizer))
            temporary.replace(paths[split])  # atomic: an interrupted run never leaves half a cache
    return {split: np.load(path, mmap_mode="r") for split, path in paths.items()}


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch number `step`: inputs (b, l) and next-token targets (b, l), the same for the same arguments."""
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"corpus of {len(tokens)} tokens is too short for sequences of {seq_len}; use more data")
    generator = np.random.default_rng([seed, step])
    starts = generator.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    windows = np.stack([tokens[start : start + seq_len + 1] for start in starts]).astype(np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]
