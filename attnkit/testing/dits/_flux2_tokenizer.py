"""An in-memory tokenizer shaped like FLUX.2-dev's Mistral-Small-3.x "Tekken" tokenizer, for the tiny Flux.2 pipeline.

The release's tokenizer (inside its `PixtralProcessor`) is a byte-level BPE over raw UTF-8 with a tiktoken-style
split regex, no prefix space, Mistral's control tokens at the lowest ids (`<unk>` 0, `<s>` 1, `</s>` 2, `[INST]` 3,
`[/INST]` 4, `[IMG]` 10, `<pad>` 11, `[SYSTEM_PROMPT]` 17, ...), `<s>` prepended by the post-processor, and a chat
template `<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]`. This one keeps all of that with a tiny vocabulary:
every word of `VOCABULARY_WORDS` is one token both at the start of a piece ("red") and after a space (" red"), and
so are the words of FLUX.2's system message. Unknown text falls back to single bytes, never `<unk>`.

Merges come from the deterministic trainer of `attnkit.testing.tokenizers` (ties to the smallest pair).
"""

from __future__ import annotations

import re

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from ..tokenizers import VOCABULARY_WORDS, byte_level_bpe

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "tiny_mistral_tokenizer"]

#: Mistral's control tokens at their release ids (Tekken reserves the lowest ids for them).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip

# Tekken's pre-tokenizer pattern (words keep one leading non-letter, e.g. the space; digits one by one).
_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

#: Mistral-Small-3.x's chat template reduced to what text (and image placeholders) need: system prompt, user
#: turns, assistant turns closed by eos. Content may be a string or a list of {"type": "text"/"image"} chunks.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}[SYSTEM_PROMPT]{%- elif message['role'] == 'user' -%}[INST]{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for chunk in message['content'] -%}"
    "{%- if chunk['type'] == 'text' -%}{{- chunk['text'] -}}{%- elif chunk['type'] == 'image' -%}[IMG]{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}[/SYSTEM_PROMPT]{%- elif message['role'] == 'user' -%}[/INST]"
    "{%- elif message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def _system_words() -> tuple[str, ...]:
    """The words of FLUX.2's system message, so the fixed prefix of every prompt is word tokens as in the release."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    return tuple(dict.fromkeys(re.findall(r"[A-Za-z]+", SYSTEM_MESSAGE)))


def _backend(words: tuple[str, ...]) -> Tokenizer:
    # Tekken's layout: specials first, then the 256 byte symbols, then merged symbols
    vocab, merges = byte_level_bpe(words, before=SPECIAL_TOKENS)
    backend = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), fuse_unk=False, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]),
    ])
    return backend


def tiny_mistral_tokenizer(model_max_length: int = 131072):
    """The tiny Tekken-style tokenizer, as transformers' generic `TokenizersBackend` (what AutoTokenizer gives for
    Mistral 3 checkpoints without mistral-common), right padding with `<pad>`, and the chat template."""
    from transformers import PreTrainedTokenizerFast

    words = tuple(dict.fromkeys((*VOCABULARY_WORDS, *_system_words())))
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(words),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
