"""Which positions of the denoiser's text sequence belong to which word of the prompt, and where a word's map
counts as the word's area.

The text sequence is built by the pipeline from one or more tokenizers: UNets (SD1.x, SDXL) see CLIP tokens, with
the begin-of-text token first; SD3 and SD3.5 see 77 CLIP tokens followed by T5 tokens; every DiT family says its own streams
(`attnkit.families`: Flux sees T5 tokens only, and labelling them with CLIP tokens gives maps of the wrong words). A word may be split into several tokens and may
occur several times. Positions come from each tokenizer's character offsets over the very prompt the pipeline
tokenizes, so sub-word splits, special tokens and case are handled by the tokenizer itself. A text sequence may hold
several prompts one after another (`PromptSegment`s: regional prompting's region prompts and base prompt).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import AttnkitError
from .families import family_of

__all__ = ["PromptSegment", "PromptTokens", "WORD_THRESHOLD", "Word", "prompt_tokens", "segment_tokens", "word_area"]

#: Share of a word map's range (min to max) above which a pixel counts as the word's area.
WORD_THRESHOLD = 0.4

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Word:
    """One occurrence of a word in the prompt and its positions in the denoiser's text sequence."""

    text: str
    start: int  # character offset in the prompt
    positions: tuple[int, ...]


@dataclass(frozen=True)
class PromptTokens:
    """The words of one prompt, in order (a repeated word occurs several times), with their token positions."""

    prompt: str
    words: tuple[Word, ...]

    def positions(self, word: str, occurrence: int | None = None) -> list[int]:
        """Positions of `word` (any case): of every occurrence, or of the `occurrence`-th (0-based) only."""
        matches = [w for w in self.words if w.text.lower() == word.lower()]
        if not matches:
            raise AttnkitError(
                f"{word!r} is not a word of the prompt {self.prompt!r}; its words are "
                f"{', '.join(dict.fromkeys(w.text.lower() for w in self.words)) or 'none'}."
            )
        if occurrence is not None:
            if not 0 <= occurrence < len(matches):
                raise AttnkitError(f"{word!r} occurs {len(matches)} time(s) in {self.prompt!r}; "
                                   f"occurrence={occurrence} is out of range.")
            matches = matches[occurrence:occurrence + 1]
        found = [p for w in matches for p in w.positions]
        if not found:
            raise AttnkitError(f"{word!r} in {self.prompt!r} lies beyond the text the pipeline encodes (truncated): "
                               "shorten the prompt or raise `max_sequence_length`.")
        return found

    @property
    def unique_words(self) -> list[str]:
        """The distinct words, lower-cased, in order of first occurrence."""
        return list(dict.fromkeys(w.text.lower() for w in self.words))


def prompt_tokens(pipe: Any, prompt: str, text_tokens: int, offset: int = 0) -> PromptTokens:
    """Label the `text_tokens` positions of `pipe`'s denoiser text sequence for `prompt` with its words; `offset`
    is where the prompt's segment starts (regional prompts concatenate one segment per region)."""
    spans = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(prompt)]
    positions: list[list[int]] = [[] for _ in spans]
    for tokenizer, stream_offset, length in _streams(pipe, text_tokens):
        encoded = tokenizer(prompt, max_length=length, truncation=True, return_offsets_mapping=True,
                            return_special_tokens_mask=True)
        for index, ((start, end), special) in enumerate(zip(encoded["offset_mapping"], encoded["special_tokens_mask"])):
            if special or start == end:
                continue
            for word, (_, word_start, word_end) in enumerate(spans):
                if start < word_end and word_start < end:
                    positions[word].append(offset + stream_offset + index)
    words = tuple(Word(text, start, tuple(p)) for (text, start, _), p in zip(spans, positions))
    return PromptTokens(prompt, words)


@dataclass(frozen=True)
class PromptSegment:
    """One prompt's run of `tokens` text tokens in a text sequence that holds several prompts one after another;
    `name` says which (regional prompting: the 0-based region index, or "base")."""

    name: int | str
    prompt: str
    tokens: int


def segment_tokens(pipe: Any, segments: Sequence[PromptSegment], name: int | str) -> PromptTokens:
    """The words of the segment called `name`, at their positions in the whole sequence; an error naming the
    segments there are."""
    offset = 0
    for segment in segments:
        if segment.name == name:
            return prompt_tokens(pipe, segment.prompt, segment.tokens, offset)
        offset += segment.tokens
    raise AttnkitError(f"no text segment {name!r}: this text holds {', '.join(repr(s.name) for s in segments)}.")


Heat = TypeVar("Heat")


def word_area(heat: Heat, threshold: float = WORD_THRESHOLD) -> Heat:
    """Where a word's map `heat` (a tensor or an array) is at least `threshold` of its range above its minimum."""
    return heat >= heat.min() + threshold * (heat.max() - heat.min())


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    """(tokenizer, first position, length) of each token stream in the denoiser's text sequence."""
    return family_of(pipe).streams(pipe, text_tokens)
