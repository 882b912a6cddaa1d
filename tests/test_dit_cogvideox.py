"""CogVideoX facts a generic DiT test cannot see: `grid` follows the patch embedding's frame-major, row-major token
order on a non-square multi-frame latent (1.0 spatial patches and 1.5 temporal patches), and the T5 word stream
lines up with the 226 text positions the pipeline feeds the transformer."""

import torch

from attnkit.families import dit_of
from dit_helpers import pipe_fixture

pipe = pipe_fixture("tiny-cogvideox")


def _token_origins(model, frames: int, height: int, width: int) -> list[tuple[int, int, int]]:
    """(latent frame, row, col) of the first latent pixel each video token is made of, in sequence order."""
    from diffusers.models.embeddings import CogVideoXPatchEmbed

    embed = model.patch_embed
    assert isinstance(embed, CogVideoXPatchEmbed) and not embed.use_positional_embeddings
    frame = torch.arange(frames).view(1, frames, 1, 1, 1)
    row = torch.arange(height).view(1, 1, 1, height, 1)
    col = torch.arange(width).view(1, 1, 1, 1, width)
    channels = model.config.in_channels
    latent = torch.zeros(1, frames, channels, height, width)
    latent[:, :, 0] = (frame * 10000 + row * 100 + col)[:, :, 0].float()
    with torch.no_grad():
        weight, bias = embed.proj.weight.clone(), embed.proj.bias.clone() if embed.proj.bias is not None else None
        embed.proj.weight.zero_()
        if bias is not None:
            embed.proj.bias.zero_()
        embed.proj.weight.view(embed.proj.weight.shape[0], -1)[0, 0] = 1.0  # feature 0 = channel 0, first pixel
        try:
            out = embed(torch.zeros(1, 3, model.config.text_embed_dim), latent)[0, 3:, 0]
        finally:
            embed.proj.weight.copy_(weight)
            if bias is not None:
                embed.proj.bias.copy_(bias)
    return [(int(v) // 10000, int(v) % 10000 // 100, int(v) % 100) for v in out.round().tolist()]


def test_grid_follows_the_patch_embedding_on_a_non_square_video(pipe):
    model = pipe.transformer
    grid = dit_of(model).grid({"hidden_states": torch.zeros(1, 3, 16, 6, 10)}, model)
    assert (grid.frames, grid.rows, grid.cols) == (3, 3, 5)
    expect = [(f, r * 2, c * 2) for f in range(3) for r in range(3) for c in range(5)]
    assert _token_origins(model, 3, 6, 10) == expect


def test_grid_with_cogvideox15_temporal_patches():
    from diffusers import CogVideoXTransformer3DModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            patch_size_t=2, use_rotary_positional_embeddings=True, patch_bias=False,
        ).eval()
    grid = dit_of(model).grid({"hidden_states": torch.zeros(1, 4, 4, 4, 6)}, model)
    assert (grid.frames, grid.rows, grid.cols) == (2, 2, 3)
    expect = [(f * 2, r * 2, c * 2) for f in range(2) for r in range(2) for c in range(3)]
    assert _token_origins(model, 4, 4, 6) == expect


def test_t5_stream_matches_the_226_positions_the_pipeline_encodes(pipe):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["encoder_hidden_states"].shape[:2])),
        with_kwargs=True)
    try:
        pipe("a red circle", num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert seen == [(2, 226)]  # uncond and cond in one batch
    [(tokenizer, first, length)] = dit_of(pipe.transformer).streams(pipe, 226)
    encoded = tokenizer("a red circle", max_length=length, truncation=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    fed = pipe.tokenizer("a red circle", padding="max_length", max_length=226, truncation=True).input_ids
    assert encoded["input_ids"] == fed[:len(encoded["input_ids"])]
    words = [first + i for i, special in enumerate(encoded["special_tokens_mask"]) if not special]
    assert words == [0, 1, 2]
