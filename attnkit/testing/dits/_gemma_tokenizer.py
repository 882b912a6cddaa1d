"""An in-memory tokenizer of the release's class, `GemmaTokenizer`, for the tiny Sana and Lumina 2 pipelines (both
encode prompts with Gemma 2).

Gemma's tokenizer is a byte-fallback BPE over text whose spaces the normalizer turns into "▁", with no prefix space
and `<bos>` prepended (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4, then the 256 byte tokens). This one
is built by transformers' own `GemmaTokenizer(vocab=..., merges=...)` with a tiny vocabulary: every word of
`VOCABULARY_WORDS` is one token both at the start of the text ("red") and after a space ("▁red"), and so are the
words of the prompt prefixes the pipelines add (Sana's complex human instruction, Lumina 2's system prompt), so
those prefixes tokenize into word tokens as in the release. Other text falls back to single characters or bytes,
never `<unk>`. Merges come from a deterministic trainer (ties to the smallest pair).
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

from ..tokenizers import VOCABULARY_WORDS, bpe_vocab, learn_merges

__all__ = ["SPECIAL_TOKENS", "tiny_gemma_tokenizer"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_SPACE = "▁"
_LUMINA2_SEPARATOR = "<Prompt Start>"  # Lumina 2 joins system prompt and prompt with " <Prompt Start> "
_CHARACTERS = _SPACE + string.ascii_letters + string.digits + string.punctuation


def _prefix_words() -> tuple[str, ...]:
    """Words of the fixed prompt prefixes of the Sana and Lumina 2 pipelines (their defaults)."""
    import inspect

    texts: list[str] = []
    try:
        from diffusers import SanaPipeline

        texts += inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    except (ImportError, KeyError):
        pass
    try:
        from diffusers import Lumina2Pipeline

        source = inspect.getsource(Lumina2Pipeline.__init__)  # the pipeline sets `self.system_prompt` there
        texts += re.findall(r'self\.system_prompt = "([^"]*)"', source)
    except (ImportError, OSError, TypeError):
        pass
    texts.append(_LUMINA2_SEPARATOR)
    words = [w for text in texts for w in re.findall(r"[A-Za-z]+", text)]
    return tuple(dict.fromkeys(words))


@lru_cache(maxsize=2)
def _vocab_and_merges(words: tuple[str, ...]) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Specials, the 256 byte-fallback tokens, single characters, then merged symbols."""
    merges = learn_merges((p for word in words for p in (word, _SPACE + word)), end_of_word="")
    before = (*SPECIAL_TOKENS, *(f"<0x{i:02X}>" for i in range(256)), *_CHARACTERS)
    return bpe_vocab(merges, before=before), tuple(merges)


def tiny_gemma_tokenizer(model_max_length: int = 8192):
    """The tiny `GemmaTokenizer`: `<bos>` first, right padding with `<pad>` (the pipelines set the side they need)."""
    from transformers import GemmaTokenizer

    words = tuple(dict.fromkeys((*VOCABULARY_WORDS, *_prefix_words())))
    vocab, merges = _vocab_and_merges(words)
    return GemmaTokenizer(vocab=dict(vocab), merges=list(merges), add_bos_token=True, add_eos_token=False,
                          model_max_length=model_max_length, padding_side="right")
