"""In-memory CLIP and T5 tokenizers for the tiny test pipelines.

Real tokenizers live on the Hub; tests must run offline, so these are built from a
small fixed word list. Every word in :data:`VOCABULARY_WORDS` is a single token in
both tokenizers, so tests can address "the token for *cat*" without caring about
sub-word splits. Unknown words still encode (CLIP: byte-level characters, T5:
single characters), never as ``unk``, so any ASCII prompt works.

Building is deterministic: the BPE merges are learned by a tiny trainer written
here (ties broken lexicographically) instead of ``tokenizers``' trainer, whose
tie-breaking depends on hash-map order and so could change token ids between runs.

The ``tokenizers`` pipelines are assembled here, exactly as transformers 5 builds
them and as the real checkpoints' ``tokenizer.json`` files hold them, and wrapped
with the ``*TokenizerFast`` classes: transformers 4 and 5 both take a
``tokenizer_object`` there, so both produce the same token ids.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from itertools import pairwise

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram
from transformers import CLIPTokenizerFast, T5TokenizerFast

__all__ = [
    "CLIP_MODEL_MAX_LENGTH",
    "T5_MODEL_MAX_LENGTH",
    "VOCABULARY_WORDS",
    "tiny_clip_tokenizer",
    "tiny_t5_tokenizer",
]

#: Words guaranteed to be one token each (lower-case; CLIP lower-cases its input).
VOCABULARY_WORDS: tuple[str, ...] = (
    # function words
    "a", "an", "the", "and", "of", "on", "in", "at", "to", "with", "is", "next",
    # colours
    "red", "green", "blue", "yellow", "orange", "purple", "black", "white",
    # shapes and objects
    "circle", "square", "triangle", "cat", "dog", "bird", "car", "house", "tree",
    "man", "woman", "park", "sky", "beach", "mountain", "flower",
    # composition and style
    "photo", "painting", "left", "right", "top", "bottom", "big", "small",
    "blurry", "sharp", "high", "low", "quality", "bad", "ugly",
)  # fmt: skip

#: Positions the CLIP text encoders accept, as in every Stable Diffusion release.
CLIP_MODEL_MAX_LENGTH = 77
#: Longest T5 prompt the pipelines request (Flux's default ``max_sequence_length``).
T5_MODEL_MAX_LENGTH = 512

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_END_OF_WORD = "</w>"

_T5_PAD, _T5_EOS, _T5_UNK = "<pad>", "</s>", "<unk>"
_T5_SPACE = "▁"  # SentencePiece's word-start marker
# Unigram log-probabilities: a whole word must always beat spelling it out.
_T5_SPECIAL_SCORE = 0.0
_T5_WORD_SCORE = -1.0
_T5_CHAR_SCORE = -5.0
_T5_CHARACTERS = string.ascii_letters + string.digits + string.punctuation


def learn_merges(words: Iterable[str], *, end_of_word: str = _END_OF_WORD) -> list[tuple[str, str]]:
    """Learns BPE merges until every word is one symbol, deterministically: ties go to the smallest pair (the
    `tokenizers` trainer breaks ties in hash order). `end_of_word` joins each word's last symbol (CLIP's ``</w>``;
    byte-level BPEs pass ``""``). Shared by every in-memory BPE tokenizer."""
    segmented = [[*word[:-1], word[-1] + end_of_word] for word in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        pair_counts = Counter(pair for symbols in segmented for pair in pairwise(symbols))
        if not pair_counts:
            return merges
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        segmented = [_apply_merge(symbols, best) for symbols in segmented]


def _apply_merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged: list[str] = []
    index = 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return merged


def bpe_vocab(merges: Iterable[tuple[str, str]], *, before: Iterable[str] = (),
              after: Iterable[str] = ()) -> dict[str, int]:
    """Ids in order: `before`, the merged symbols, `after`. Two merges can spell the same token; ids stay
    contiguous all the same (the first spelling keeps its id)."""
    tokens = [*before, *(left + right for left, right in merges), *after]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def byte_level(text: str) -> str:
    """`text` in byte-level BPE's printable spelling (" red" -> "Ġred")."""
    return "".join(piece for piece, _ in
                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text))


@lru_cache(maxsize=8)
def byte_level_bpe(words: tuple[str, ...], *, extra_pieces: tuple[str, ...] = (), before: tuple[str, ...] = (),
                   after: tuple[str, ...] = ()) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """A byte-level BPE (GPT-2 style, no end-of-word suffix) where each of `words` is one token with or without a
    leading space, and so is each of `extra_pieces` (already byte-level). Ids: `before`, the 256 byte symbols, the
    merged symbols, `after`. Callers copy the cached vocabulary before changing it."""
    pieces = (*(byte_level(spelling) for word in words for spelling in (word, " " + word)), *extra_pieces)
    merges = learn_merges(pieces, end_of_word="")
    vocab = bpe_vocab(merges, before=(*before, *sorted(pre_tokenizers.ByteLevel.alphabet())), after=after)
    return vocab, tuple(merges)


@lru_cache(maxsize=4)
def _clip_vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's layout: byte alphabet, the same with ``</w>``, merges, then bos and eos last."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = learn_merges(words)
    before = (*alphabet, *(symbol + _END_OF_WORD for symbol in alphabet))
    return bpe_vocab(merges, before=before, after=(_CLIP_BOS, _CLIP_EOS)), tuple(merges)


def _special(token: str) -> AddedToken:
    """Matched verbatim before normalization, as in the real files: lower-cased or split, it would not match."""
    return AddedToken(token, special=True, normalized=False)


def _clip_backend(words: tuple[str, ...]) -> Tokenizer:
    """CLIP's pipeline: NFC, whitespace runs to one space, lower-case, CLIP's word regex, byte-level BPE."""
    vocab, merges = _clip_vocab_and_merges(words)
    backend = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix=_END_OF_WORD, fuse_unk=False, unk_token=_CLIP_EOS))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(
            Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
            behavior="removed",
            invert=True,
        ),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([_special(_CLIP_BOS), _special(_CLIP_EOS)])
    backend.post_processor = processors.RobertaProcessing(
        (_CLIP_EOS, vocab[_CLIP_EOS]), (_CLIP_BOS, vocab[_CLIP_BOS]), trim_offsets=False, add_prefix_space=False
    )
    return backend


def tiny_clip_tokenizer(words: tuple[str, ...] = VOCABULARY_WORDS,
                        model_max_length: int = CLIP_MODEL_MAX_LENGTH) -> CLIPTokenizerFast:
    """A CLIP BPE tokenizer where each of `words` is one token, padded with eos like SD's.

    bos and eos are the two highest ids, as in the real 49408-token vocabulary, so
    CLIP's pooling (first eos, or legacy argmax) picks the same position either way.
    """
    return CLIPTokenizerFast(
        tokenizer_object=_clip_backend(words),
        unk_token=_CLIP_EOS,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # transformers 5's default; 4.x's default glues punctuation on decode
    )


def _t5_backend(words: tuple[str, ...]) -> Tokenizer:
    """T5's pipeline without its SentencePiece normalizer: whitespace split, ``▁`` word starts, Unigram, then eos."""
    pieces = [
        (_T5_PAD, _T5_SPECIAL_SCORE),
        (_T5_EOS, _T5_SPECIAL_SCORE),
        (_T5_UNK, _T5_SPECIAL_SCORE),
        (_T5_SPACE, _T5_CHAR_SCORE),
        *((_T5_SPACE + word, _T5_WORD_SCORE) for word in words),
        *((character, _T5_CHAR_SCORE) for character in _T5_CHARACTERS),
    ]
    backend = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=_T5_SPACE, prepend_scheme="always", split=True),
    ])
    backend.decoder = decoders.Metaspace(replacement=_T5_SPACE, prepend_scheme="always", split=True)
    backend.add_special_tokens([_special(_T5_PAD), _special(_T5_EOS), _special(_T5_UNK)])
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", _T5_EOS], pair=["$A", _T5_EOS, "$B", _T5_EOS], special_tokens=[(_T5_EOS, 1)]
    )
    return backend


def tiny_t5_tokenizer(words: tuple[str, ...] = VOCABULARY_WORDS,
                      model_max_length: int = T5_MODEL_MAX_LENGTH) -> T5TokenizerFast:
    """A T5 Unigram tokenizer where each of `words` is one token, with T5's ids: pad 0, eos 1, unk 2.

    No sentinel (``<extra_id_*>``) tokens: the pipelines only use T5 as an encoder.
    """
    return T5TokenizerFast(
        tokenizer_object=_t5_backend(words),
        eos_token=_T5_EOS,
        unk_token=_T5_UNK,
        pad_token=_T5_PAD,
        extra_ids=0,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
