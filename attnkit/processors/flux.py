"""Site processor for Flux.1 attention: double-stream joint [text | image] blocks and single-stream blocks.

Replays diffusers' `FluxAttnProcessor`; with no control active it calls diffusers' attention dispatcher with the
backend and context-parallel config the stock processor has (`set_attention_backend`, `attention_backend(...)`,
`enable_parallelism`), so outputs stay bit-identical. Where a control needs a mask or the log-sum-exp, attnkit's own
exact kernel computes the site, and a backend the user selected is named once in a warning. Single-stream blocks receive text and image
concatenated in one sequence: the text length comes from the session state (the transformer's
`encoder_hidden_states`), since the attention module itself cannot know it.
"""

from __future__ import annotations

import warnings

import torch
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from ..errors import AttnkitError, AttnkitWarning
from .base import AttentionCall, SiteProcessor, TokenLayout

__all__ = ["FluxSiteProcessor"]


class FluxSiteProcessor(SiteProcessor):
    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        query, key, value, text_q, text_k, text_v = _projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        joint = attn.added_kv_proj_dim is not None and encoder_hidden_states is not None
        if joint:
            text_q, text_k, text_v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (text_q, text_k, text_v))
            text_q = attn.norm_added_q(text_q)
            text_k = attn.norm_added_k(text_k)
            query = torch.cat([text_q, query], dim=1)
            key = torch.cat([text_k, key], dim=1)
            value = torch.cat([text_v, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        text_tokens = encoder_hidden_states.shape[1] if joint else self._single_stream_text_tokens()
        parts = (("text", text_tokens), ("image", query.shape[1] - text_tokens))
        call = AttentionCall(self.site, None, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                             TokenLayout(parts, parts), self.grid_for(parts[1][1]), attn.head_dim**-0.5,
                             mask=attention_mask)
        hidden_states = self.attend(call, self._dispatch).transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if joint:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [text_tokens, hidden_states.shape[1] - text_tokens], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states

    def _single_stream_text_tokens(self) -> int:
        entries = self.active_entries()
        text = entries[0][1].text_tokens if entries else None
        if text is None:
            raise AttnkitError(
                f"{self.site.name} is a Flux single-stream block, whose text length attnkit reads from the "
                "transformer's `encoder_hidden_states`; call the transformer with it inside the session."
            )
        return text

    # diffusers sets these on the site's processor (`set_attention_backend`, `enable_parallelism`): while attnkit
    # holds the site they belong to the stock processor, which gets the site back.
    @property
    def _attention_backend(self) -> object:
        return getattr(self.original, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, backend: object) -> None:
        self.original._attention_backend = backend

    @property
    def _parallel_config(self) -> object:
        return getattr(self.original, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, config: object) -> None:
        self.original._parallel_config = config

    def own_kernel(self, need: str) -> None:
        if self._parallel_config is not None:
            raise AttnkitError(
                f"{self.site.name} runs under context parallelism (`parallel_config`), where attnkit cannot compute "
                f"{need} over the whole sequence. Run this feature without context parallelism."
            )
        backend = _backend_name(self._attention_backend)
        if backend not in (None, "native"):
            warnings.warn(
                f"the {backend!r} attention backend cannot give attnkit {need}: attnkit computes attention with its "
                f"own exact kernel at the sites that need it; the other sites keep {backend!r}.",
                AttnkitWarning, stacklevel=2,
            )

    def _dispatch(self, call: AttentionCall) -> torch.Tensor:
        """diffusers' dispatcher with the stock processor's backend, in its (B, L, H, D) layout."""
        out = dispatch_attention_fn(
            call.q.transpose(1, 2), call.k.transpose(1, 2), call.v.transpose(1, 2), attn_mask=call.mask,
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        return out.transpose(1, 2)


def _backend_name(backend: object) -> str | None:
    """The backend a stock processor would use: its own, else the active one (`attention_backend(...)`)."""
    if backend is None:
        registry = getattr(attention_dispatch, "_AttentionBackendRegistry", None)
        backend = registry.get_active_backend()[0] if registry is not None else None
    return getattr(backend, "value", backend)


def _projections(attn, hidden_states, encoder_hidden_states):
    """q, k, v of the image stream and of the text stream (None in single-stream blocks), fused or not."""
    if attn.fused_projections:
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        text = (None, None, None)
        if encoder_hidden_states is not None and hasattr(attn, "to_added_qkv"):
            text = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        return (query, key, value, *text)
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    text = (None, None, None)
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        text = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                attn.add_v_proj(encoder_hidden_states))
    return (query, key, value, *text)
