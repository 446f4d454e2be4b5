"""Generate text from a checkpoint written by train_small.py, or from a preset with random weights.

    python sample.py --ckpt out/hymba-small --prompt "def "
    python sample.py --preset hymba-tiny --max-new-tokens 20      random weights: a demo of the machinery

Tokens are printed as they are generated; the last line gives the speed.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from nanohybrid.config import ModelConfig, get_config
from nanohybrid.generate import generate
from nanohybrid.model import LanguageModel
from nanohybrid.tokenizer import load_tokenizer
from train_small import load_checkpoint


def load_model(args) -> tuple[LanguageModel, str]:
    """The model and its tokenizer name, from --ckpt or --preset."""
    if args.ckpt:
        meta, directory = load_checkpoint(Path(args.ckpt))
        model = LanguageModel(ModelConfig(**meta["model"]))
        try:
            model.load_state_dict(load_file(directory / "model.safetensors"))
        except Exception as error:
            raise ValueError(f"cannot load the weights in {directory} ({type(error).__name__}); "
                             "the checkpoint is damaged: retrain or pick another") from None
        return model, meta["train"]["tokenizer"]
    torch.manual_seed(args.seed)
    return LanguageModel(get_config(args.preset)), "bytes"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a run directory written by train_small.py (out/<run>)")
    source.add_argument("--preset", help="a preset name, with random weights")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="def ", help="the prompt text")
    prompt.add_argument("--prompt-file", help="read the prompt from this file")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)

    model, tokenizer_name = load_model(args)
    tokenizer = load_tokenizer(tokenizer_name)
    text = Path(args.prompt_file).read_text() if args.prompt_file else args.prompt
    prompt = torch.tensor([tokenizer.encode(text)])
    if prompt.numel() == 0:
        raise ValueError("the prompt is empty; pass --prompt with some text")
    generator = torch.Generator().manual_seed(args.seed)
    print(text, end="", flush=True)
    new_tokens, shown, started = [], "", time.time()
    for token in generate(model.eval(), prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generator):
        new_tokens.append(token.item())
        complete = tokenizer.decode(new_tokens).rstrip("\ufffd")  # hold back a character still missing bytes
        print(complete[len(shown):], end="", flush=True)
        shown = complete
    elapsed = time.time() - started
    print(tokenizer.decode(new_tokens)[len(shown):], end="")
    print(f"\n[{len(new_tokens)} tokens in {elapsed:.2f}s, {len(new_tokens) / elapsed:.1f} tokens/s]")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
