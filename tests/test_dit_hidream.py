"""HiDream-I1 specifics the generic DiT tests cannot see: the Llama 3 tokenizer's single-token words, the word
positions of the three text streams, and the padded sequence of a non-square image."""

from __future__ import annotations

import pytest
import torch

from attnkit.families.hidream import FAMILY
from attnkit.tokens import prompt_tokens
from attnkit.testing.tokenizers import VOCABULARY_WORDS
from dit_helpers import pipe_fixture

pytestmark = pytest.mark.skipif(FAMILY.model_class is None, reason="this diffusers has no HiDream")

pipe = pipe_fixture("tiny-hidream")


def test_llama_tokenizer_keeps_every_vocabulary_word_one_token(pipe):
    tokenizer = pipe.tokenizer_4
    assert type(tokenizer).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    for word in VOCABULARY_WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
        assert len(tokenizer("a " + word, add_special_tokens=False).input_ids) == 2, word
    ids = tokenizer("a red circle").input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 4
    assert tokenizer.pad_token == tokenizer.eos_token == "<|eot_id|>"  # set by the pipeline, as in the release


def test_word_positions_follow_t5_then_two_llama_layers(pipe):
    tokens = prompt_tokens(pipe, "a red circle", 3 * 128)
    red = next(w for w in tokens.words if w.text == "red")
    # T5: "a red circle </s>"; Llama: "<|begin_of_text|> a red circle"
    assert red.positions == (1, 128 + 2, 256 + 2)


def _run(pipe, monkeypatch, **size):
    seen, bound, inside = [], {}, []
    stock = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        if inside:  # the transformer's calls, not the text encoders'
            seen.append((q.shape[2], k.shape[2]))
        return stock(q, k, v, *args, **kwargs)

    def enter(module, args, kwargs):
        bound.update(signature.bind_partial(module, *args, **kwargs).arguments)
        inside.append(1)

    import inspect

    signature = inspect.signature(type(pipe.transformer).forward)
    hooks = [pipe.transformer.register_forward_pre_hook(enter, with_kwargs=True),
             pipe.transformer.register_forward_hook(lambda *_: inside.clear())]
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    try:
        with torch.inference_mode():
            pipe("a red circle", num_inference_steps=1, output_type="latent", guidance_scale=1.0, **size)
    finally:
        for hook in hooks:
            hook.remove()
        monkeypatch.undo()
    return seen, bound


def test_square_sequence_is_image_then_text(pipe, monkeypatch):
    seen, bound = _run(pipe, monkeypatch)
    grid = FAMILY.grid(bound, pipe.transformer)
    assert (grid.frames, grid.rows, grid.cols) == (1, 8, 8)
    text = FAMILY.text_tokens(bound)
    assert text == 128 + 2 * 128
    assert set(seen) == {(64 + text, 64 + text)}
    assert FAMILY.parts("single", 64 + text, 64 + text, grid, text)[0] == (("image", 64), ("text", text))


def test_non_square_image_is_padded_to_max_resolution(pipe, monkeypatch):
    seen, bound = _run(pipe, monkeypatch, height=48, width=80)
    grid = FAMILY.grid(bound, pipe.transformer)
    assert (grid.rows, grid.cols) == (6, 10)  # 12x20 latent pixels in 2x2 patches
    _, masks, sizes, _ = pipe.transformer.patchify(bound["hidden_states"])
    assert sizes[0].tolist() == [grid.rows, grid.cols] and int(masks[0].sum()) == grid.tokens
    text, max_seq = FAMILY.text_tokens(bound), pipe.transformer.max_seq
    assert set(seen) == {(max_seq + text, max_seq + text)}
    queries, keys = FAMILY.parts("joint", max_seq + text, max_seq + text, grid, text)
    assert queries == keys == (("image", 60), ("pad", max_seq - 60), ("text", text))
