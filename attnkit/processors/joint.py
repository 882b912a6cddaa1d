"""Site processor for SD3 / SD3.5 MMDiT attention: joint [image | text] attention and MMDiT-X image-only `attn2`.

Replays diffusers' `JointAttnProcessor2_0` step for step so that with no control active the output is
bit-identical; the last block's `context_pre_only` attention returns its text part unprojected, as stock does.
"""

from __future__ import annotations

import torch

from .base import AttentionCall, SiteProcessor, TokenLayout, sdpa

__all__ = ["JointSiteProcessor"]


class JointSiteProcessor(SiteProcessor):
    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch_size, image_tokens = hidden_states.shape[:2]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        parts = [("image", image_tokens)]
        if encoder_hidden_states is not None:
            text_q = attn.add_q_proj(encoder_hidden_states)
            text_k = attn.add_k_proj(encoder_hidden_states)
            text_v = attn.add_v_proj(encoder_hidden_states)
            text_q, text_k, text_v = (
                t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for t in (text_q, text_k, text_v)
            )
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query = torch.cat([query, text_q], dim=2)
            key = torch.cat([key, text_k], dim=2)
            value = torch.cat([value, text_v], dim=2)
            parts.append(("text", encoder_hidden_states.shape[1]))

        layout = TokenLayout(tuple(parts), tuple(parts))
        call = AttentionCall(self.site, None, query, key, value, layout, self.grid_for(image_tokens),
                             head_dim**-0.5)  # stock takes `attention_mask` and ignores it: so does attnkit
        hidden_states = self.attend(call, sdpa)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :image_tokens], hidden_states[:, image_tokens:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states
