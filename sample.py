"""Generate text from a checkpoint written by train_small.py, or from a preset with random weights.

    python sample.py --ckpt out/hymba-small --prompt "def "
    python sample.py --preset hymba-tiny --max-new-tokens 20      random weights: a demo of the machinery

Tokens are printed as they are generated; the last line gives the speed.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from nanohybrid import ops
from nanohybrid.generate import check_length, check_sampling, decode, prefill_prompts
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.tokenizer import load_tokenizer
from nanohybrid.tools.training import load_model


def load(args) -> tuple[LanguageModel, str]:
    """The model and its tokenizer name, from --ckpt or --preset."""
    if args.ckpt:
        model, meta = load_model(Path(args.ckpt))
        return model, meta["train"]["tokenizer"]
    torch.manual_seed(args.seed)
    return LanguageModel(get_config(args.preset)), "bytes"


def cache_summary(cache) -> str:
    by_kind = {}
    for (_, kind), size in cache.nbytes().items():
        by_kind[kind] = by_kind.get(kind, 0) + size
    return ", ".join(f"{kind} {size / 1e6:.2f} MB" for kind, size in sorted(by_kind.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a run directory written by train_small.py (out/<run>)")
    source.add_argument("--preset", help="a preset name, with random weights")
    parser.add_argument("--prompt", action="append", help="prompt text; repeat for a batch of prompts")
    parser.add_argument("--prompt-file", action="append", help="a file holding one prompt; repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--prefill-chunk", type=int, default=None, help="prefill long prompts this many tokens at a time")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--kernels", default="", help='op implementations, e.g. "attention=sdpa,rglru_scan=triton" '
                        '(see nanohybrid/ops.py); the same as setting NANOHYBRID_KERNELS')
    args = parser.parse_args(argv)
    if args.kernels:
        ops.parse_selection(args.kernels)  # an unknown op, implementation or file is an error now, not mid-run
        os.environ["NANOHYBRID_KERNELS"] = args.kernels

    model, tokenizer_name = load(args)
    model.eval()
    tokenizer = load_tokenizer(tokenizer_name)
    texts = (args.prompt or []) + [Path(path).read_text() for path in args.prompt_file or []] or ["def "]
    prompts = [tokenizer.encode(text) for text in texts]
    if not all(prompts):
        raise ValueError("a prompt is empty; give every --prompt some text")
    check_length(model, prompts, args.max_new_tokens)
    check_sampling(args.temperature, args.top_k, args.top_p)
    generator = torch.Generator().manual_seed(args.seed)
    stream = len(prompts) == 1  # one prompt: print tokens as they come; several: print each at the end
    if stream:
        print(texts[0], end="", flush=True)
    rows, shown, started = [[] for _ in prompts], "", time.time()
    logits, cache = prefill_prompts(model, prompts, args.prefill_chunk)
    for token in decode(model, logits, cache, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generator):
        for row, value in zip(rows, token.tolist()):
            row.append(value)
        if stream:
            complete = tokenizer.decode(rows[0]).rstrip("\ufffd")  # hold back a character still missing bytes
            print(complete[len(shown):], end="", flush=True)
            shown = complete
    elapsed = time.time() - started
    if stream:
        print(tokenizer.decode(rows[0])[len(shown):])
    else:
        for i, (text, row) in enumerate(zip(texts, rows)):
            print(f"--- prompt {i}\n{text}{tokenizer.decode(row)}")
    total = sum(len(row) for row in rows)
    print(f"[{total} tokens in {elapsed:.2f}s, {total / elapsed:.1f} tokens/s; cache: {cache_summary(cache)}]")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
