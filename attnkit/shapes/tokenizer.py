"""A CLIP tokenizer for the shapes vocabulary: every word is exactly one token.

One token per word lets attention maps and regional masks address a word by its token. Merges are learned by a
small deterministic BPE (ties broken lexicographically), so token ids never depend on a trainer's hash order.
"""

from __future__ import annotations

from transformers import CLIPTokenizerFast, T5TokenizerFast

from ..testing.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer
from .data import COLORS, SHAPES

__all__ = ["MAX_LENGTH", "WORDS", "shapes_t5_tokenizer", "shapes_tokenizer"]

#: Words of every caption the world produces, plus a few for layout prompts.
WORDS: tuple[str, ...] = ("a", "and", *COLORS, *SHAPES, "left", "right", "top", "bottom", "on", "the")
#: bos + 11 words ("a red circle and a blue square and a green triangle") + eos, with room to spare.
MAX_LENGTH = 16


def shapes_tokenizer() -> CLIPTokenizerFast:
    """CLIP BPE over :data:`WORDS` (byte alphabet kept, so any ASCII prompt encodes), padded with eos like SD's."""
    return tiny_clip_tokenizer(WORDS, MAX_LENGTH)


def shapes_t5_tokenizer() -> T5TokenizerFast:
    """Flux's T5 tokenizer for :data:`WORDS`: one token per word, eos, then pad up to :data:`MAX_LENGTH`."""
    return tiny_t5_tokenizer(WORDS, MAX_LENGTH)
