"""Tokenizers behind one interface: bytes (offline default) or a Hugging Face tokenizer.

    bytes                       UTF-8 bytes 0..255, plus an end-of-text token 256 between documents
    path/to/tokenizer.json      any Hugging Face `tokenizers` file, e.g. SmolLM's (vocab 49152)
    HuggingFaceTB/SmolLM-135M   a hub id, downloaded once by `tokenizers` (needs the network)
"""

from pathlib import Path


class ByteTokenizer:
    name = "bytes"
    vocab_size = 257  # 256 byte values + end of text; the models round their embedding up to 320
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
    def __init__(self, name: str):
        from tokenizers import Tokenizer

        self.name = name
        if Path(name).is_file():
            self.tokenizer = Tokenizer.from_file(name)
        else:
            try:
                self.tokenizer = Tokenizer.from_pretrained(name)
            except Exception as error:
                raise ValueError(
                    f"cannot load tokenizer {name!r} ({type(error).__name__}): use --tokenizer=bytes offline, "
                    "or a local tokenizer.json path"
                ) from None
        self.vocab_size = self.tokenizer.get_vocab_size()
        eos = next((t for t in ("<|endoftext|>", "</s>", "<eos>") if self.tokenizer.token_to_id(t) is not None), None)
        if eos is None:
            raise ValueError(f"tokenizer {name!r} has no end-of-text token (<|endoftext|>, </s> or <eos>)")
        self.eos_id = self.tokenizer.token_to_id(eos)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def load_tokenizer(name: str):
    return ByteTokenizer() if name == "bytes" else HuggingFaceTokenizer(name)
