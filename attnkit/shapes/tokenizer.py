"""A CLIP tokenizer for the shapes vocabulary: every word is exactly one token.

One token per word lets attention maps and regional masks address a word by its token. Merges are learned by a
small deterministic BPE (ties broken lexicographically), so token ids never depend on a trainer's hash order.
"""

from __future__ import annotations

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, T5Tokenizer

from ..testing.tokenizers import learn_merges, tiny_t5_tokenizer
from .data import COLORS, SHAPES

__all__ = ["MAX_LENGTH", "WORDS", "shapes_t5_tokenizer", "shapes_tokenizer"]

#: Words of every caption the world produces, plus a few for layout prompts.
WORDS: tuple[str, ...] = ("a", "and", *COLORS, *SHAPES, "left", "right", "top", "bottom", "on", "the")
#: bos + 11 words ("a red circle and a blue square and a green triangle") + eos, with room to spare.
MAX_LENGTH = 16
_BOS, _EOS, _EOW = "<|startoftext|>", "<|endoftext|>", "</w>"


def shapes_tokenizer() -> CLIPTokenizer:
    """CLIP BPE over :data:`WORDS` (byte alphabet kept, so any ASCII prompt encodes), padded with eos like SD's."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = learn_merges(WORDS)
    tokens = [*alphabet, *(c + _EOW for c in alphabet), *(a + b for a, b in merges), _BOS, _EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token=_EOS, bos_token=_BOS, eos_token=_EOS,
                         pad_token=_EOS, model_max_length=MAX_LENGTH)


def shapes_t5_tokenizer() -> T5Tokenizer:
    """Flux's T5 tokenizer for :data:`WORDS`: one token per word, eos, then pad up to :data:`MAX_LENGTH`."""
    return tiny_t5_tokenizer(WORDS, MAX_LENGTH)
