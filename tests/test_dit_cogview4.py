"""CogView4 facts a generic DiT test cannot see: the GLM-4 tokenizer keeps every vocabulary word one token, the word
stream lines up with the pipeline's left padding to a multiple of 16, and `grid` follows the patch embedding."""

import pytest
import torch

from attnkit.families import dit_of
from attnkit.testing import VOCABULARY_WORDS
from dit_helpers import pipe_fixture

pipe = pipe_fixture("tiny-cogview4")


def test_every_vocabulary_word_is_one_token_with_or_without_its_space(pipe):
    for word in VOCABULARY_WORDS:
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word
        assert len(pipe.tokenizer(" " + word, add_special_tokens=False).input_ids) == 1, word


def test_glm4_prefix_and_left_padding(pipe):
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("a cat").input_ids)
    assert tokens[:2] == ["[gMASK]", "<sop>"]
    assert type(pipe.tokenizer).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert pipe.tokenizer.padding_side == "left"


@pytest.mark.parametrize("prompt", ["", "a red circle", "a big red dog next to a small blue house in the park " * 2])
def test_word_stream_matches_the_ids_the_pipeline_encodes(pipe, prompt):
    """`_get_glm_embeds`: tokenize, then prepend pad ids up to a multiple of 16; the stream must give the same ids."""
    ids = pipe.tokenizer(prompt, padding="longest", return_tensors="pt").input_ids
    pad = (16 - ids.shape[1] % 16) % 16
    fed = torch.cat([torch.full((1, pad), pipe.tokenizer.pad_token_id), ids], dim=1)[0].tolist()
    family = dit_of(pipe.transformer)
    [(tokenizer, first, length)] = family.streams(pipe, len(fed))
    assert (first, length) == (0, len(fed))
    encoded = tokenizer(prompt, max_length=length, truncation=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    assert encoded["input_ids"] == fed
    assert sum(1 - s for s in encoded["special_tokens_mask"]) == ids.shape[1] - 2


def test_word_positions_of_a_real_generation(pipe):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    try:
        pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert seen == [16]
    [(tokenizer, first, length)] = dit_of(pipe.transformer).streams(pipe, seen[0])
    encoded = tokenizer("a red circle", max_length=length, truncation=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    words = [first + i for i, special in enumerate(encoded["special_tokens_mask"]) if not special]
    assert words == [13, 14, 15]


def test_grid_follows_the_patch_embedding_on_a_non_square_latent(pipe):
    model = pipe.transformer
    family = dit_of(model)
    height, width = 6, 10
    rows = torch.arange(height).view(1, 1, height, 1).expand(1, 16, height, width).float()
    cols = torch.arange(width).view(1, 1, 1, width).expand(1, 16, height, width).float()
    grid = family.grid({"hidden_states": rows}, model)
    assert (grid.frames, grid.rows, grid.cols) == (1, 3, 5)
    embed = model.patch_embed
    proj, text_proj = embed.proj, embed.text_proj
    embed.proj, embed.text_proj = torch.nn.Identity(), torch.nn.Identity()
    try:
        row_of, _ = embed(rows, torch.zeros(1, 1, 32))
        col_of, _ = embed(cols, torch.zeros(1, 1, 32))
    finally:
        embed.proj, embed.text_proj = proj, text_proj
    assert row_of.shape[1] == grid.tokens
    # Each token's first feature is its patch's top-left latent pixel: row-major order over the grid.
    expect = [(r * 2, c * 2) for r in range(grid.rows) for c in range(grid.cols)]
    assert list(zip(row_of[0, :, 0].int().tolist(), col_of[0, :, 0].int().tolist())) == expect


def test_regional_segments_are_left_padded_together_and_words_land_on_their_tokens(pipe):
    """Regional prompts are encoded as one batch (each left-padded to the longest one's multiple of 16); the word
    stream must find each region's words at the ends of its segment."""
    import attnkit
    from attnkit import maps

    long = "a big red dog next to a small blue house in the park with a green tree and a yellow flower"
    spec = {"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]}, {"prompt": long, "box": [0.5, 0, 1, 1]}]}
    site = next(s for s in attnkit.sites(pipe) if s.kind == "joint")
    with attnkit.regional(pipe, spec) as call:
        arguments = call(seed=0, num_inference_steps=1)
        assert call.encoded.cond == ((0, 32), (1, 32))
        assert arguments["prompt_embeds"].shape[1] == 64
        with maps.trace(pipe, prompt=call, sites_=[site], steps=[0]) as trace:
            pipe(output_type="latent", **arguments)
        first, second = trace.tokens(region=0), trace.tokens(region=1)
    assert [w.positions for w in first.words] == [(29,), (30,), (31,)]
    assert second.words[-1].positions == (63,) and second.words[0].positions == (63 - 21 + 1,)
