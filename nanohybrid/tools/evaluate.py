"""Zero-shot evaluation with lm-evaluation-harness on the tasks of Hymba's tables, in the paper's layout.

    python -m nanohybrid.tools.evaluate --ckpt out/hymba-100m                          Table 3's tasks
    python -m nanohybrid.tools.evaluate --ckpt out/hymba-100m --tasks piqa,arc_easy --limit 200
    python -m nanohybrid.tools.evaluate --ckpt out/run --tasks my_task --include-path path/to/task/yamls

Columns follow Hymba's Table 3 (arXiv 2411.13676; docs/conventions.md, "Evaluation columns"): Wikitext
word perplexity, LAMBADA perplexity, SWDE and SQuAD-C (greedy, stop at a newline, 48 tokens, "contains",
as in the harness bundled with NVlabs/hymba), their mean, then the accuracy of LAMBADA, PIQA,
ARC-C, ARC-E, HellaSwag, Winogrande, TruthfulQA and SIQA and their mean. Accuracy is `acc`, not
`acc_norm` (the paper's Llama-3.2-3B HellaSwag of 55.29 matches acc); TruthfulQA is `truthfulqa_mc2`
(the paper does not say which). The harness downloads each task's data, so this needs the network;
tasks in local files (--include-path) run offline.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..generate import generate
from .tokenizer import load_tokenizer
from .training import load_model

# (column, task, metric); "mean" columns average the named columns.
PAPER_COLUMNS = [
    ("Wiki ppl", "wikitext", "word_perplexity"), ("LMB ppl", "lambada_openai", "perplexity"),
    ("SWDE", "swde", "contains"), ("SQuAD-C", "squad_completion", "contains"), ("Recall avg", "mean", "SWDE,SQuAD-C"),
    ("Lambada", "lambada_openai", "acc"), ("PIQA", "piqa", "acc"), ("ARC-C", "arc_challenge", "acc"),
    ("ARC-E", "arc_easy", "acc"), ("HellaSwag", "hellaswag", "acc"), ("Winogrande", "winogrande", "acc"),
    ("TruthfulQA", "truthfulqa_mc2", "acc"), ("SIQA", "social_iqa", "acc"),
    ("Commonsense avg", "mean", "Lambada,PIQA,ARC-C,ARC-E,HellaSwag,Winogrande,TruthfulQA,SIQA"),
]
PAPER_TASKS = sorted({task for _, task, _ in PAPER_COLUMNS if task != "mean"})


def harness_model(model, tokenizer, batch_size: int = 16):
    """Our model behind lm-evaluation-harness's LM interface (imported here: it is an optional dependency)."""
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    device = next(model.parameters()).device
    window = model.config.max_seq_len

    class HarnessModel(LM):
        @torch.no_grad()
        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            """(context, continuation) token lists -> (log p(continuation | context), is it the greedy output).
            The context comes first in the input, cut from the left to the model's length."""
            results = [None] * len(pairs)
            order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                rows = [(pairs[i][0] + pairs[i][1])[-(window + 1):][:-1] for i in batch]
                width = max(map(len, rows))  # right padding changes no earlier logit of a causal model
                inputs = torch.tensor([row + [tokenizer.eos_id] * (width - len(row)) for row in rows], device=device)
                log_probs = F.log_softmax(model(inputs).logits.float(), dim=-1)
                for row, i in zip(range(len(batch)), batch):
                    continuation = pairs[i][1]
                    end = len(rows[row])
                    scores = log_probs[row, end - len(continuation) : end]
                    target = torch.tensor(continuation, device=device)
                    greedy = bool((scores.argmax(-1) == target).all())
                    results[i] = (scores.gather(-1, target[:, None]).sum().item(), greedy)
            return results

        def loglikelihood(self, requests):  # the end-of-text token opens every context, as between documents
            return self._score([([tokenizer.eos_id] + tokenizer.encode(r.args[0]), tokenizer.encode(r.args[1]))
                                for r in requests])

        def loglikelihood_rolling(self, requests):
            totals = []
            for request in requests:
                windows = get_rolling_token_windows(tokenizer.encode(request.args[0]), tokenizer.eos_id, window, 1)
                pairs = [make_disjoint_window(pair) for pair in windows]
                totals.append(sum(score for score, _ in self._score(pairs)))
            return totals

        def generate_until(self, requests):
            outputs = []
            for request in requests:
                context, options = request.args
                stops, limit = options.get("until", []), options.get("max_gen_toks", 48)
                prompt = tokenizer.encode(context)[-(window - limit):]
                text = ""
                new_tokens = []
                for token in generate(model, [prompt], limit, temperature=0):
                    new_tokens.append(token.item())
                    text = tokenizer.decode(new_tokens)
                    if any(stop in text for stop in stops):
                        break
                for stop in stops:
                    text = text.split(stop)[0]
                outputs.append(text)
            return outputs

    return HarnessModel()


def paper_table(results: dict, name: str) -> str:
    """A markdown row in the paper's layout (accuracies in %, as in its tables), plus columns for other tasks."""
    values = {}
    for column, task, metric in PAPER_COLUMNS:
        if task == "mean":
            parts = [values.get(part) for part in metric.split(",")]
            values[column] = sum(parts) / len(parts) if all(p is not None for p in parts) else None
        elif task in results:
            value = results[task][f"{metric},none"]
            values[column] = value if "perplexity" in metric else 100 * value
    extra = {task: 100 * metrics.get("acc,none", float("nan")) for task, metrics in results.items() if task not in PAPER_TASKS}
    header = [column for column, _, _ in PAPER_COLUMNS] + list(extra)
    cells = [f"{values[c]:.2f}" if values.get(c) is not None else "–" for c, _, _ in PAPER_COLUMNS]
    cells += [f"{value:.2f}" for value in extra.values()]
    return "\n".join(["| model | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 1),
                      f"| {name} | " + " | ".join(cells) + " |"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a run directory written by train_small.py")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS), help="comma-separated harness task names")
    parser.add_argument("--include-path", help="a directory of task YAML files (local tasks)")
    parser.add_argument("--limit", type=int, help="at most this many examples per task")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError("evaluation needs lm-evaluation-harness: pip install lm-eval") from None
    model, meta = load_model(Path(args.ckpt))
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    tokenizer = load_tokenizer(meta["train"]["tokenizer"])
    tasks = args.tasks.split(",")
    manager = TaskManager(include_path=args.include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; pass --include-path for local task files")
    output = simple_evaluate(model=harness_model(model, tokenizer, args.batch_size), tasks=tasks, limit=args.limit,
                             task_manager=manager, log_samples=False, bootstrap_iters=0)
    print(paper_table(output["results"], Path(args.ckpt).name))


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
