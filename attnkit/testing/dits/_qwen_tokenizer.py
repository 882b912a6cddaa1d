"""An in-memory Qwen2 byte-level BPE tokenizer (the `Qwen2Tokenizer` class of Qwen2.5-VL and Qwen3), for the tiny
Qwen-Image and Z-Image pipelines.

The released tokenizers are ~150k-token files on the Hub; this one has the same pipeline (NFC, Qwen2's pre-tokenizer
regex, byte-level BPE without a prefix space, no bos, `<|im_start|>` / `<|im_end|>` / `<|endoftext|>` special
tokens), built by `Qwen2Tokenizer(vocab=..., merges=...)` exactly as transformers builds it from the real files. Every
word of `VOCABULARY_WORDS` is one token, at the start of a text and after a space (" red" is one token, as in the
real vocabulary), and so is every word of the chat templates the pipelines wrap prompts in, so that Qwen-Image's
template prefix is exactly the 34 tokens its pipeline drops (`prompt_template_encode_start_idx`). Unknown words fall
back to bytes. Merges are learned deterministically (ties to the smallest pair).
"""

from __future__ import annotations

from ..tokenizers import VOCABULARY_WORDS, byte_level_bpe

__all__ = ["IM_START", "IM_END", "ENDOFTEXT", "QWEN3_CHAT_TEMPLATE", "tiny_qwen2_tokenizer"]

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

#: Words of Qwen-Image's prompt template and of the chat roles: one token each, as in the real vocabulary.
TEMPLATE_WORDS: tuple[str, ...] = (
    "system", "user", "assistant", "Describe", "image", "by", "detailing", "color", "shape", "size", "texture",
    "quantity", "text", "spatial", "relationships", "objects", "background",
)  # fmt: skip

#: Qwen3's chat template reduced to what `apply_chat_template(messages, add_generation_prompt=True,
#: enable_thinking=...)` renders for plain-text messages (the real one also handles tools and reasoning content):
#: with `enable_thinking=False` the generation prompt carries an empty think block, as in the release.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def tiny_qwen2_tokenizer(words: tuple[str, ...] = VOCABULARY_WORDS, *, eos_token: str = IM_END,
                         chat_template: str | None = None, model_max_length: int = 131072):
    """A `Qwen2Tokenizer` where each of `words` (and of the template words) is one token, special tokens last."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = byte_level_bpe(tuple(dict.fromkeys(words + TEMPLATE_WORDS)), after=(ENDOFTEXT, IM_START, IM_END))
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), unk_token=None,
                               eos_token=eos_token, pad_token=ENDOFTEXT, model_max_length=model_max_length,
                               clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                                for t in (IM_START, IM_END)]})
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
