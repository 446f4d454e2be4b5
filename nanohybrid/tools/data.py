"""Training data: where the text comes from, tokenized once and cached, and reproducible batches.

    --data=embedded            the offline default: the Python standard library's own source and
                               docstrings (PSF licence), read from the running interpreter's `sysconfig`
                               paths; it resembles the code part of SmolLM-Corpus (python-edu)
    --data=path/to/files       .txt (one document per file), .jsonl or .parquet files with a `text`
                               column: a file, a directory of them, or a glob
    --data=smollm[:subsets]    HuggingFaceTB/smollm-corpus streamed from the hub, its subsets mixed by
                               weight, e.g. smollm:cosmopedia-v2=0.3,fineweb-edu-dedup=0.7

Local files and SmolLM-Corpus go through the same code: `datasets` streams the rows, documents are
split between train and validation by a hash, tokenized with an end-of-text token after each, and the
token streams are cached on disk (NANOHYBRID_CACHE, default ~/.cache/nanohybrid), written atomically.

Batches are random windows of the token stream, drawn from a generator seeded by (seed, step): batch
number `step` is the same whenever it is asked for, so a resumed run sees exactly the data it would have.

Shape glossary
  b batch   l sequence length
"""

import glob
import hashlib
import os
import socket
import sysconfig
from pathlib import Path

import numpy as np
import torch

VALIDATION_SHARE = 50  # one document in 50 goes to validation


class DataError(ValueError):
    """Data that cannot be used, with what to do about it."""

SMOLLM = "HuggingFaceTB/smollm-corpus"
# Our default mixture (the papers give none for small runs): mostly educational web text, some synthetic
# textbooks, some Python. python-edu rows hold only a blob id; its text is fetched from Software Heritage.
SMOLLM_WEIGHTS = {"fineweb-edu-dedup": 0.7, "cosmopedia-v2": 0.2, "python-edu": 0.1}
FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
        splits["val" if is_validation(relative) else "train"].append(path.read_text(encoding="utf-8", errors="replace"))
    if not splits["train"] or not splits["val"]:
        raise DataError(f"no Python standard library sources found under {root}; pass --data with your own files")
    return splits


def is_validation(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % VALIDATION_SHARE == 0


def parse_smollm(spec: str) -> dict[str, float]:
    """"smollm" or "smollm:cosmopedia-v2,python-edu" or "smollm:cosmopedia-v2=0.3,..." -> {subset: weight}."""
    _, _, listed = spec.partition(":")
    if not listed:
        return dict(SMOLLM_WEIGHTS)
    weights = {}
    for item in listed.split(","):
        subset, _, weight = item.partition("=")
        if subset not in SMOLLM_WEIGHTS:
            raise DataError(f"--data={spec}: unknown SmolLM-Corpus subset {subset!r}; choose from {', '.join(SMOLLM_WEIGHTS)}")
        weights[subset] = float(weight) if weight else SMOLLM_WEIGHTS[subset]
    return weights


def data_files(spec: str) -> list[str]:
    """The .txt/.jsonl/.parquet files a --data path names (a file, a directory or a glob), all of one kind."""
    path = Path(spec)
    files = sorted(path.rglob("*")) if path.is_dir() else [path] if path.is_file() else sorted(map(Path, glob.glob(spec)))
    files = [f for f in files if f.suffix in FILE_BUILDERS]
    if not files:
        raise DataError(f"--data={spec}: no .txt, .jsonl or .parquet files there; use --data=embedded offline")
    if len({FILE_BUILDERS[f.suffix] for f in files}) > 1:
        raise DataError(f"--data={spec}: mixes file kinds ({', '.join(sorted({f.suffix for f in files}))}); use one kind")
    return [str(f) for f in files]


def fetch_python_edu_text(row: dict) -> str:
    """python-edu rows carry a Software Heritage blob id; the text lives, gzipped, in its public S3 bucket."""
    import gzip

    try:
        import boto3
    except ImportError:
        raise DataError("python-edu rows hold only blob ids: `pip install boto3` (with AWS credentials) to fetch "
                         "their text, or leave it out: --data=smollm:fineweb-edu-dedup,cosmopedia-v2") from None
    body = boto3.client("s3").get_object(Bucket="softwareheritage", Key=f"content/{row['blob_id']}")["Body"]
    with gzip.GzipFile(fileobj=body) as file:
        return file.read().decode("utf-8", errors="ignore")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test, so that an offline run fails in seconds rather than after the hub's retries."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_rows(datasets, spec: str, seed: int):
    """SmolLM-Corpus rows from the hub: the chosen subsets, interleaved by weight."""
    weights = parse_smollm(spec)
    offline = f"cannot stream {SMOLLM}: this needs the network. Offline, use --data=embedded or --data=path/to/files"
    if not hub_reachable():
        raise DataError(f"{offline} (huggingface.co is unreachable)")
    try:
        streams = [datasets.load_dataset(SMOLLM, subset, split="train", streaming=True) for subset in weights]
    except Exception as error:
        raise DataError(f"{offline} ({type(error).__name__})") from None
    total = sum(weights.values())
    return datasets.interleave_datasets(streams, [w / total for w in weights.values()], seed=seed,
                                        stopping_strategy="all_exhausted")


def file_rows(datasets, spec: str):
    """Rows of local .txt (one document per file), .jsonl or .parquet files."""
    files = data_files(spec)
    builder = FILE_BUILDERS[Path(files[0]).suffix]
    options = {"sample_by": "document"} if builder == "text" else {}
    return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)


def stream_documents(spec: str, seed: int):
    """The text of every document a --data spec names, in a fixed order, through `datasets` streaming."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"--data={spec} needs the `datasets` package: pip install datasets") from None
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # errors are reported here, in one line
    try:
        rows = hub_rows(datasets, spec, seed) if spec == "smollm" or spec.startswith("smollm:") else file_rows(datasets, spec)
        for row in rows:
            if "text" in row:
                yield row["text"]
            elif "blob_id" in row:
                yield fetch_python_edu_text(row)
            else:
                raise DataError(f"--data={spec}: rows have no `text` column (columns: {', '.join(row)})")
    except DataError:
        raise
    except StopIteration:  # what `datasets` raises for an empty .jsonl file
        raise DataError(f"--data={spec}: the files hold no documents") from None
    except Exception as error:  # a corrupt file: say which data could not be read, in one line
        reason = str(error).splitlines()[0] if str(error) else ""
        raise DataError(f"--data={spec}: cannot read it ({type(error).__name__}: {reason[:200]})") from None


def streamed_corpus(spec: str, tokenizer, train_tokens: int, val_tokens: int, seed: int) -> dict[str, np.ndarray]:
    """Token streams of a --data spec: documents until the splits hold `train_tokens` and `val_tokens` (or
    the data ends), one document in VALIDATION_SHARE kept for validation. Cached on disk after the first call."""
    key = f"{spec}|{tokenizer.name}|{train_tokens}|{val_tokens}|{seed}|{VALIDATION_SHARE}"
    key = hashlib.sha1(key.encode()).hexdigest()[:12]
    paths = {split: cache_dir() / f"data-{key}-{split}.npy" for split in ("train", "val")}
    if not all(path.exists() for path in paths.values()):
        streams, counts = {"train": [], "val": []}, {"train": 0, "val": 0}
        for number, text in enumerate(stream_documents(spec, seed)):
            split = "val" if is_validation(f"{number}:{text[:64]}") else "train"
            streams[split].append(encode_document(text, tokenizer))
            counts[split] += len(streams[split][-1])
            if counts["train"] >= train_tokens and counts["val"] >= val_tokens:
                break
        if not streams["train"] or not streams["val"]:
            raise DataError(f"--data={spec}: too little text ({len(streams['train']) + len(streams['val'])} documents) "
                             "to fill both a training and a validation split; give more documents")
        _save_splits(paths, {split: np.concatenate(chunks) for split, chunks in streams.items()})
    return {split: np.load(path, mmap_mode="r") for split, path in paths.items()}


def _save_splits(paths: dict[str, Path], streams: dict[str, np.ndarray]) -> None:
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    for split, tokens in streams.items():
        temporary = paths[split].with_suffix(".tmp.npy")
        np.save(temporary, tokens)
        temporary.replace(paths[split])  # atomic: an interrupted run never leaves half a cache


def load_corpus(spec: str, tokenizer, train_tokens: int, val_tokens: int, seed: int) -> dict[str, np.ndarray]:
    """{"train", "val"} token streams for a --data spec, with at least the tokens asked for where the data has them."""
    if spec == "embedded":
        return embedded_corpus(tokenizer)
    return streamed_corpus(spec, tokenizer, train_tokens, val_tokens, seed)


def encode_document(text: str, tokenizer) -> np.ndarray:
    """A document's tokens followed by the end-of-text token, as uint32."""
    return np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], dtype=np.uint32)


def tokenize_documents(documents: list[str], tokenizer) -> np.ndarray:
    """Documents, each followed by the end-of-text token, as one uint32 stream."""
    return np.concatenate([encode_document(text, tokenizer) for text in documents])


def embedded_corpus(tokenizer) -> dict[str, np.ndarray]:
    """The standard-library corpus as token streams, tokenized on the first call and cached on disk."""
    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha1(f"{root}|{tokenizer.name}|{VALIDATION_SHARE}".encode()).hexdigest()[:12]
    paths = {split: cache_dir() / f"stdlib-{key}-{split}.npy" for split in ("train", "val")}
    if not all(path.exists() for path in paths.values()):
        _save_splits(paths, {split: tokenize_documents(docs, tokenizer) for split, docs in stdlib_documents().items()})
    return {split: np.load(path, mmap_mode="r") for split, path in paths.items()}


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch number `step`: inputs (b, l) and next-token targets (b, l), the same for the same arguments."""
    if len(tokens) <= seq_len + 1:
        raise DataError(f"corpus of {len(tokens)} tokens is too short for sequences of {seq_len}; use more data")
    generator = np.random.default_rng([seed, step])
    starts = generator.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    windows = np.stack([tokens[start : start + seq_len + 1] for start in starts]).astype(np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]
