"""The apples-to-apples comparison of Hymba's Table 3: the same recipe for Hymba, Mamba-2, Mamba-2 with
FFN, Llama 3 and Samba at equal size and depth, scored on language-model loss and on recall (MQAR).

train_small.py --compare trains the five language models; this file holds the recall part and the
reporting. Gated DeltaNet and Qwen3-Next (RECALL_ALSO) are scored on recall too and reported beside the
five; Table 3 has no row for them, so the orderings against the paper leave them out. Recall follows
Zoology: one model per architecture is trained on a mixture of MQAR settings, then scored on each setting
alone. The recall models are the `tiny` presets (width 64) at 2 layers, Zoology's depth, with RoPE base
10^4 for every attention layer: Llama 3's 5·10^5 is a long-context choice that leaves a 16-channel head
almost no positional resolution at these lengths. Qwen3-Next puts gated attention in every 4th layer; at
2 layers that would be none, so its recall model takes every 2nd (a Gated DeltaNet layer, then a
gated-attention layer, as Samba's 2 layers are Mamba, then attention).

Shape glossary
  l sequence length   D key-value pairs
"""

import csv
import math
from pathlib import Path

import torch

from ..config import ModelConfig
from ..model import LanguageModel
from ..presets import get_config
from .mqar import mqar_accuracy, mqar_batch

TABLE_3_ARCHITECTURES = ("hymba", "mamba2", "mamba2-ffn", "llama3", "samba")
RECALL_ALSO = ("gated-deltanet", "qwen3-next")  # recall rows beside the five, outside the orderings
RECALL_OVERRIDES = {"qwen3-next": dict(full_attention_interval=2)}  # 2 layers: Gated DeltaNet, gated attention
MQAR_SETTINGS = ((32, 4), (48, 6), (64, 8))  # (l, D), harder to the right
MQAR_VOCAB = 32  # keys 1..15, values 16..31: small enough to learn in minutes on a CPU
MQAR_STEPS, MQAR_BATCH, MQAR_LR = 2000, 64, 1e-3  # a 2-layer attention model learns all three in ~1500 steps
# Hymba's Table 3 (1B, 100B SmolLM-Corpus tokens): Wikitext perplexity and recall average (SWDE, SQuAD-C).
PAPER_TABLE_3 = {"hymba": (18.62, 49.50), "mamba2": (19.17, 43.34), "mamba2-ffn": (20.42, 28.92),
                 "llama3": (19.28, 47.33), "samba": (19.91, 36.17)}
# Table 9 (300M, 100B FineWeb tokens), the same columns; its SSM baselines are Mamba-1 (with and without FFN).
PAPER_TABLE_9 = {"hymba": (28.53, 51.79), "mamba2": (30.78, 19.23), "mamba2-ffn": (33.41, 15.33),
                 "llama3": (30.04, 39.98), "samba": (31.41, 31.01)}


def ordering(scores: dict[str, float], higher_is_better: bool) -> list[str]:
    """Architectures from best to worst."""
    return sorted(scores, key=scores.get, reverse=higher_is_better)


def kendall_tau(first: list[str], second: list[str]) -> float:
    """Rank agreement of two orderings of the same names: 1 identical, -1 reversed."""
    position = {name: i for i, name in enumerate(second)}
    pairs = [(a, b) for i, a in enumerate(first) for b in first[i + 1 :]]
    return sum(1 if position[a] < position[b] else -1 for a, b in pairs) / len(pairs)


def orderings(results: list[dict]) -> str:
    """Markdown: our orderings (validation loss, MQAR mean) beside the paper's (Wiki ppl, recall average)."""
    metrics = (("language modelling (val loss; paper: Wiki ppl)", {r["arch"]: r["val_loss"] for r in results}, 0, False),
               ("recall (MQAR mean; paper: SWDE, SQuAD-C)", {r["arch"]: sum(r["mqar"].values()) for r in results}, 1, True))
    lines = ["| best first | ours | Table 3 (1B) | τ | Table 9 (300M) | τ |", "|---|---|---|---|---|---|"]
    for name, scores, column, higher_is_better in metrics:
        ours = ordering(scores, higher_is_better)
        cells = [name, ", ".join(ours)]
        for table in (PAPER_TABLE_3, PAPER_TABLE_9):
            paper = ordering({arch: table[arch][column] for arch in scores}, higher_is_better)
            cells += [", ".join(paper), f"{kendall_tau(ours, paper):+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recall_config(arch: str) -> ModelConfig:
    """The recall model of `arch`: its tiny preset at Zoology's 2 layers, MQAR's vocabulary, RoPE base 10^4."""
    return get_config(f"{arch}-tiny", n_layers=2, vocab_size=MQAR_VOCAB, rope_theta=10000.0,
                      **RECALL_OVERRIDES.get(arch, {}))


def train_mqar(arch: str, seed: int, device) -> dict:
    """Train recall_config(arch) on a cycle of MQAR_SETTINGS; return {(l, D): accuracy} on held-out data."""
    torch.manual_seed(seed)
    model = LanguageModel(recall_config(arch)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=MQAR_LR, betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    for step in range(MQAR_STEPS):
        length, pairs = MQAR_SETTINGS[step % len(MQAR_SETTINGS)]
        inputs, targets = mqar_batch(MQAR_BATCH, length, pairs, MQAR_VOCAB, generator)
        model(inputs.to(device), targets.to(device)).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    accuracy = {}
    for setting in MQAR_SETTINGS:
        inputs, targets = mqar_batch(256, *setting, MQAR_VOCAB, torch.Generator().manual_seed(10_000 + seed))
        accuracy[setting] = mqar_accuracy(model, inputs.to(device), targets.to(device))
    return accuracy


def recall_columns(mqar: dict) -> dict:
    """{column: cell} for one architecture's MQAR accuracies ({(l, D): accuracy}) and their mean."""
    row = {f"MQAR l={length} D={pairs}": f"{mqar[length, pairs]:.3f}" for length, pairs in MQAR_SETTINGS}
    return row | {"MQAR mean": f"{sum(mqar.values()) / len(MQAR_SETTINGS):.3f}"}


def write_report(results: list[dict], out: Path, recall_only: list[dict] = ()) -> str:
    """results: one dict per architecture of the five (arch, parameters, val_loss, tokens_per_second, seconds,
    mqar); recall_only: one dict (arch, mqar) per architecture scored on recall alone, a row each after the five
    with "–" in the other columns. Writes results.csv, results.md and comparison.png under `out`; returns the
    markdown."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        row = {"arch": r["arch"], "parameters (M)": f"{r['parameters'] / 1e6:.2f}", "val loss": f"{r['val_loss']:.4f}",
               "val ppl": f"{math.exp(r['val_loss']):.3f}", "train tok/s": f"{r['tokens_per_second']:.0f}"}
        row.update(recall_columns(r["mqar"]))
        paper_ppl, paper_recall = PAPER_TABLE_3[r["arch"]]
        row.update({"paper Wiki ppl": f"{paper_ppl}", "paper recall": f"{paper_recall}"})
        paper_ppl, paper_recall = PAPER_TABLE_9[r["arch"]]
        row.update({"paper T9 Wiki ppl": f"{paper_ppl}", "paper T9 recall": f"{paper_recall}"})
        rows.append(row)
    rows += [dict.fromkeys(rows[0], "–") | {"arch": r["arch"]} | recall_columns(r["mqar"]) for r in recall_only]
    with open(out / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = list(rows[0])
    markdown = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row[h] for h in header) + " |" for row in rows])
    markdown += ("\n\nOrderings of the five (τ: Kendall's rank agreement, 1 identical, -1 reversed):\n\n"
                 + orderings(results))
    (out / "results.md").write_text(markdown + "\n")
    plot(results, recall_only, out / "comparison.png")
    return markdown


def plot(results: list[dict], recall_only: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, (loss_axis, recall_axis) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["arch"] for r in results]
    loss_axis.bar(names, [r["val_loss"] for r in results], color="tab:blue")
    loss_axis.set(ylabel="validation loss (nats/token)", title="Language modelling")
    loss_axis.set_ylim(min(r["val_loss"] for r in results) * 0.95, max(r["val_loss"] for r in results) * 1.02)
    labels = [f"{length}/{pairs}" for length, pairs in MQAR_SETTINGS]
    for r, style in [(r, "-") for r in results] + [(r, "--") for r in recall_only]:  # dashed: recall only
        recall_axis.plot(labels, [r["mqar"][s] for s in MQAR_SETTINGS], style, marker="o", label=r["arch"])
    recall_axis.set(xlabel="MQAR setting (sequence length / key-value pairs)", ylabel="accuracy", ylim=(0, 1.02),
                    title="Associative recall")
    recall_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


