"""Tokenizers for the tiny models, from vocabularies written here (nothing is downloaded)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, T5TokenizerFast

CLIP_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _byte_characters() -> list[str]:
    """The 256 printable characters byte-level BPE writes bytes as (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    characters, extra = [], 0
    for byte in range(256):
        if byte in printable:
            characters.append(chr(byte))
        else:
            characters.append(chr(256 + extra))
            extra += 1
    return characters


def clip_vocabulary() -> dict[str, int]:
    # Every byte character, alone and with the end-of-word mark, is in the vocabulary, so any
    # prompt tokenizes without merges.
    characters = _byte_characters()
    tokens = [*characters, *(c + "</w>" for c in characters), *CLIP_SPECIAL]
    return {token: index for index, token in enumerate(tokens)}


CLIP_VOCAB_SIZE = 2 * 256 + len(CLIP_SPECIAL)


def clip_tokenizer(*, pad: str = "<|endoftext|>") -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=clip_vocabulary(), merges=[], pad_token=pad, model_max_length=77)


def publish_clip_tokenizer(folder: Path) -> None:
    """The hub's CLIP tokenizer folders hold the slow tokenizer's files (vocab.json and
    merges.txt), not tokenizer.json: leave a saved folder that way, so that loading converts
    them as it will with the real download."""
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps(clip_vocabulary()))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def t5_tokenizer() -> T5TokenizerFast:
    from transformers import T5TokenizerFast

    words = "a an the of and in on with photo portrait headshot person man woman professional"
    words += " studio light lighting background suit smile face turn this into keep same"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -5.0) for w in words.split()]
    pieces += [(c, -10.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
