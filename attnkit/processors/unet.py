"""Site processor for UNet attention (SD1.x, SD2.x, SDXL): `attn1` self-attention and `attn2` cross-attention.

Replays diffusers' `AttnProcessor2_0` (SDPA) or `AttnProcessor` (what `set_default_attn_processor()` installs:
explicit softmax, no q/k norms) step for step, whichever the site had, so that with no control active the output
is bit-identical.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor

from ..sites import Site
from .base import AttentionCall, SiteProcessor, TokenLayout, sdpa

__all__ = ["UNetSiteProcessor"]


class UNetSiteProcessor(SiteProcessor):
    def __init__(self, site: Site, original: object):
        super().__init__(site, original)
        self.classic = type(original) is AttnProcessor

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        is_cross = encoder_hidden_states is not None
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None and not self.classic:
            query = attn.norm_q(query)
        if attn.norm_k is not None and not self.classic:
            key = attn.norm_k(key)

        image = ("image", query.shape[2])
        layout = TokenLayout((image,), (("text", key.shape[2]),) if is_cross else (image,))
        call = AttentionCall(self.site, None, query, key, value, layout, self.grid_for(query.shape[2]),
                             head_dim**-0.5, mask=attention_mask)
        hidden_states = self.attend(call, (lambda c: _classic(attn, c)) if self.classic else sdpa)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        if not self.classic:
            hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _classic(attn: torch.nn.Module, call: AttentionCall) -> torch.Tensor:
    """`AttnProcessor`'s kernel: heads folded into the batch, `get_attention_scores` (baddbmm, softmax), bmm."""
    batch, heads, tokens, head_dim = call.q.shape
    folded = [t.reshape(batch * heads, -1, head_dim) for t in (call.q, call.k, call.v)]
    mask = None if call.mask is None else call.mask.reshape(batch * heads, -1, call.mask.shape[-1])
    probabilities = attn.get_attention_scores(folded[0], folded[1], mask)
    return torch.bmm(probabilities, folded[2]).reshape(batch, heads, tokens, head_dim)
