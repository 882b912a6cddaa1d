"""An in-memory Llama 3 byte-level BPE tokenizer, for the tiny HiDream-I1 (`PreTrainedTokenizerFast`, as
Meta-Llama-3.1-8B-Instruct's files load) and HunyuanVideo (`LlamaTokenizerFast`, as its llava-llama-3-8b tokenizer
loads) pipelines.

The released tokenizers hold 128k tokens; this one has the same `tokenizers` pipeline (Llama 3's pre-tokenizer
regex, byte-level BPE without a prefix space, `<|begin_of_text|>` prepended by the post-processor, the header / eot
special tokens) over a small vocabulary in which every word of `VOCABULARY_WORDS` (and of `extra_words`) is one
token, both at the start of a text and after a space (" red" is one token, as in the real vocabulary). Unknown text
falls back to bytes. Merges are learned deterministically (ties to the smallest pair).
"""

from __future__ import annotations

import re

from ..tokenizers import VOCABULARY_WORDS, byte_level, byte_level_bpe

__all__ = ["BEGIN_OF_TEXT", "END_HEADER", "END_OF_TEXT", "EOT", "START_HEADER", "tiny_llama3_tokenizer"]

BEGIN_OF_TEXT, END_OF_TEXT = "<|begin_of_text|>", "<|end_of_text|>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
_SPECIALS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, EOT)

#: Llama 3's pre-tokenizer split (tokenizer.json of Meta-Llama-3 / 3.1).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokens(text: str) -> list[str]:
    """`text`'s pre-tokens under Llama 3's split, special tokens left out."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False)
    plain = [part for part in re.split("|".join(re.escape(t) for t in _SPECIALS), text) if part]
    return [piece for part in plain for piece, _ in split.pre_tokenize_str(part)]


def _backend(words: tuple[str, ...], texts: tuple[str, ...]):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    pieces = tuple(byte_level(piece) for text in texts for piece in _pre_tokens(text))
    vocab, merges = byte_level_bpe(words, extra_pieces=pieces, after=_SPECIALS)
    vocab = dict(vocab)
    backend = Tokenizer(BPE(vocab=vocab, merges=list(merges), dropout=None, fuse_unk=False, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIALS])
    bos = vocab[BEGIN_OF_TEXT]
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{BEGIN_OF_TEXT}:0 $A:0",
                                      pair=f"{BEGIN_OF_TEXT}:0 $A:0 {BEGIN_OF_TEXT}:1 $B:1",
                                      special_tokens=[(BEGIN_OF_TEXT, bos)]),
    ])
    return backend


def tiny_llama3_tokenizer(extra_words: tuple[str, ...] = (), *, texts: tuple[str, ...] = (),
                          cls: str = "PreTrainedTokenizerFast", eos_token: str = EOT, pad_token: str | None = None,
                          model_max_length: int = 131072):
    """A Llama 3 tokenizer of transformers class `cls` in which every word of `VOCABULARY_WORDS` + `extra_words` is
    one token (with or without a leading space), and so is every pre-token of `texts` (prompt templates: each
    piece Llama 3's split makes of them is one token, as in the real vocabulary); special tokens take the last ids."""
    import transformers

    words = tuple(dict.fromkeys(VOCABULARY_WORDS + tuple(extra_words)))
    tokenizer_class = getattr(transformers, cls)
    # right padding: the pipelines read the prompt's tokens from the front (HunyuanVideo crops its template's
    # prefix), as the released tokenizers pad (LlamaTokenizerFast alone would default to the left)
    return tokenizer_class(tokenizer_object=_backend(words, tuple(texts)), bos_token=BEGIN_OF_TEXT,
                           eos_token=eos_token, pad_token=pad_token, model_max_length=model_max_length,
                           padding_side="right", clean_up_tokenization_spaces=False)
