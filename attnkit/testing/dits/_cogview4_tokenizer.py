"""An in-memory GLM-4 tokenizer (the one CogView4 ships: THUDM/glm-4-9b-hf's `tokenizer.json` in a
`PreTrainedTokenizerFast`), tiny, with every word of `VOCABULARY_WORDS` one token with or without its leading space.

The release's pipeline, rebuilt small: the cl100k-style split regex, byte-level BPE (no end-of-word suffix, GPT-2
style `Ġ` word starts), GLM-4's special tokens after the BPE vocabulary, and a post-processor that prepends
``[gMASK]<sop>`` to every sequence. Padding goes on the left and pads with ``<|endoftext|>``, as in the release's
`tokenizer_config.json`. BPE merges come from the deterministic trainer of `attnkit.testing.tokenizers` (ties to
the smallest pair).
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from ..tokenizers import VOCABULARY_WORDS, byte_level_bpe

__all__ = ["GLM4_SPECIAL_TOKENS", "tiny_glm4_tokenizer"]

#: GLM-4's special tokens, in the release's id order (they follow the BPE vocabulary there too).
GLM4_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
)  # fmt: skip
_PAD = _EOS = "<|endoftext|>"
# GLM-4's (and cl100k's) pre-tokenization regex.
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _backend(words: tuple[str, ...]) -> Tokenizer:
    vocab, merges = byte_level_bpe(words)
    backend = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), dropout=None, fuse_unk=False,
                            byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in GLM4_SPECIAL_TOKENS])
    ids = {token: backend.token_to_id(token) for token in ("[gMASK]", "<sop>")}
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK]:0 <sop>:0 $A:0", pair="[gMASK]:0 <sop>:0 $A:0 $B:1", special_tokens=list(ids.items())
    )
    return backend


def tiny_glm4_tokenizer(words: tuple[str, ...] = VOCABULARY_WORDS):
    """GLM-4's tokenizer class (`PreTrainedTokenizerFast`, what `AutoTokenizer` loads for CogView4), tiny."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(words),
        eos_token=_EOS,
        pad_token=_PAD,
        padding_side="left",
        model_max_length=128000,
        clean_up_tokenization_spaces=False,
    )
