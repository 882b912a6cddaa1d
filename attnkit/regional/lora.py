"""A LoRA per region: each region's adapters act on that region's tokens only, in one pass.

Inside a regional session every LoRA layer of the denoiser adds each adapter's delta weighted per token
(`attnkit.lora.weighted_forward`): an image token takes the adapters of the region it belongs to (the region the
regional mask gives it; with the couple method, the regions' blend weights at that pixel), a text token those of the
prompt it comes from (each region's prompt is encoded with its own adapters in the text encoders too), and the base
prompt's adapters apply where no region does. What serves the whole image at once (the timestep and pooled-text
embeddings, the shared negative prompt) takes every adapter at the share of the image its regions cover, so one region
over the whole image is exactly the pipeline with that adapter active. Adapters the spec does not name apply
everywhere as the pipeline has them. Nothing of peft's state changes, so the pipeline's adapters, weights and active
set are as before once the session ends; LoRA files the spec lists in `loras` are loaded on entry and removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import AttnkitError
from ..families import Family, Tokens, denoiser_of
from ..lora import LoraLayer, PerItem, adapters_of, lora_layers, weighted_forward
from ..processors import Control, ModuleCall
from .encode import Encoded
from .mask import PAD
from .spec import BASE, RegionSpec, owners_of

__all__ = ["Adapters", "RegionLoRA", "loaded", "text_adapters"]

#: The grid the share of the image each owner covers is measured on (boxes and masks are size-free fractions).
_SHARE_GRID = (64, 64)


@dataclass(frozen=True)
class Adapters:
    """The adapters of one spec: `owners` maps region indices and `BASE` to {adapter: weight}; `share` is the part of
    the image each owner's tokens cover (what applies to the whole image at once takes every adapter by it)."""

    owners: dict[int, dict[str, float]]
    share: dict[int, float]

    @classmethod
    def of(cls, spec: RegionSpec) -> Adapters:
        owners = spec.owners(_SHARE_GRID)
        counts = torch.bincount(owners + 1, minlength=len(spec.regions) + 1).double() / owners.numel()
        share = {BASE: float(counts[0])} | {i: float(counts[i + 1]) for i in range(len(spec.regions))}
        return cls(spec.adapters, share)

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(name for weights in self.owners.values() for name in weights)

    @property
    def whole(self) -> dict[str, float]:
        """Every adapter at the share of the image its owners cover."""
        weights: dict[str, float] = {}
        for owner, named in self.owners.items():
            for name, weight in named.items():
                weights[name] = weights.get(name, 0.0) + weight * self.share[owner]
        return weights


def text_adapters(pipe: Any, adapters: Adapters, name: str) -> Callable[[list[int]], PerItem]:
    """For `encode`: a context under which the text encoders of `pipe` give each prompt of a batch its owner's
    adapters (the negative every region shares: every adapter at its share of the image)."""
    denoiser = denoiser_of(pipe)
    encoders = [model for model in pipe.components.values()
                if isinstance(model, torch.nn.Module) and model is not denoiser and lora_layers(model)]
    return lambda owners: PerItem(encoders, [adapters.whole if o == PAD else adapters.owners.get(o, {})
                                             for o in owners], set(adapters.names), name)


@contextmanager
def loaded(pipe: Any, spec: RegionSpec, adapters: Adapters) -> Iterator[None]:
    """The spec's `loras` files loaded into `pipe` under their adapter names for the block, then removed (also
    after an error); before that, an error for any adapter the spec names that `pipe`'s denoiser does not hold."""
    denoiser = denoiser_of(pipe)
    files = dict(spec.loras or {})
    clashing = sorted(set(files) & _all_adapters(pipe))
    if clashing:
        raise AttnkitError(f"the spec's `loras` would load {clashing}, but the pipeline already has adapters of those "
                           "names: give the files other names, or leave them out of `loras` to use the loaded ones.")
    added: list[str] = []
    try:
        for name in files:
            _load(pipe, spec, name, denoiser)
            added.append(name)
        missing = sorted(adapters.names - adapters_of(denoiser))
        if missing:
            held = sorted(adapters_of(denoiser))
            raise AttnkitError(
                f"the spec names LoRA adapter(s) {missing}, which {type(denoiser).__name__} does not hold (it holds "
                f"{held or 'none'}): load them first (`pipe.load_lora_weights(path, adapter_name=...)`), or list "
                "their files under the spec's `loras: {name: path}` (`--lora NAME=PATH` on the command line).")
        yield
    finally:
        if added:
            pipe.delete_adapters(added)


def _load(pipe: Any, spec: RegionSpec, name: str, denoiser: torch.nn.Module) -> None:
    path = spec.lora_path(name)
    if not path.exists():
        raise AttnkitError(f"LoRA {name!r}: no file at {str(path)!r} (relative paths are read from the spec's "
                           "folder).")
    if not hasattr(pipe, "load_lora_weights"):
        raise AttnkitError(f"{type(pipe).__name__} cannot load LoRA files (diffusers gives it no "
                           "`load_lora_weights`).")
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except Exception as error:  # diffusers and safetensors raise many kinds for a file that is no LoRA
        raise AttnkitError(f"LoRA {name!r}: {str(path)!r} is not a LoRA file diffusers can load into "
                           f"{type(pipe).__name__} ({type(error).__name__}: {error}).") from error
    if name not in adapters_of(denoiser):
        if name in _all_adapters(pipe):
            pipe.delete_adapters([name])
        raise AttnkitError(f"LoRA {name!r}: {str(path)!r} has no weights for {type(denoiser).__name__}: it was made "
                           "for another model.")


def _all_adapters(pipe: Any) -> set[str]:
    return {name for component in pipe.components.values() if isinstance(component, torch.nn.Module)
            for name in adapters_of(component)}


class RegionLoRA(Control):
    """Weights every LoRA layer's adapters per token, by the regions of `spec` (see the module docstring)."""

    name = "regional-lora"
    modules = (LoraLayer,)

    def __init__(self, spec: RegionSpec, encoded: Encoded, adapters: Adapters, family: Family,
                 denoiser: torch.nn.Module, method: str):
        self.spec, self.encoded, self.adapters = spec, encoded, adapters
        self.family, self.denoiser, self.method = family, denoiser, method
        self._weights: dict[tuple, dict[str, torch.Tensor]] = {}

    def module_forward(self, call: ModuleCall) -> torch.Tensor:
        state = call.state
        if state.latent is None or not state.branches:
            raise AttnkitError(f"{call.name}: a LoRA per region needs the denoiser's latent size and CFG branches; run "
                               "the pipeline inside the `with attnkit.regional(...)` block.")

        def weights(shape: torch.Size) -> dict[str, torch.Tensor]:
            key = (tuple(shape), state.latent, state.text_tokens, state.branches, call.x.device, call.x.dtype)
            if key not in self._weights:
                self._weights[key] = self._token_weights(call, tuple(shape))
            return self._weights[key]

        return weighted_forward(call.module, call.x, call.args, call.kwargs, weights, self.adapters.names, call.name)

    def _token_weights(self, call: ModuleCall, out: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """{adapter: weight per batch item and token of the layer's output (of shape `out`), shaped to broadcast
        against it}."""
        state, x = call.state, call.x
        readings = self.family.tokens_in(out, state.latent, state.text_tokens, self.denoiser)
        if out[0] != len(state.branches) or len(readings) != 1:
            what = "could be any of " + "; ".join(str(r.parts) for r in readings) if len(readings) > 1 else \
                "matches none"
            raise AttnkitError(
                f"{call.name}: its output {out} {what} of this forward's {len(state.branches)} items of image tokens "
                f"(latent {state.latent}) and {state.text_tokens} text tokens, so attnkit cannot tell which region "
                "each token belongs to. Generate at another size, or load the LoRA without this layer.")
        shares = self._shares(readings[0], state.branches, state.latent)  # (items, tokens, owners) or (items, owners)
        shape = (out[0], 1, *out[2:]) if len(out) == 4 else (out[0], -1, 1) if len(out) == 3 else (-1, 1)
        weights = {}
        for name in self.adapters.names:
            per_owner = torch.tensor([self.adapters.owners.get(o, {}).get(name, 0.0) for o in self._columns],
                                     dtype=torch.float64)
            weights[name] = (shares @ per_owner).to(x.device, x.dtype).reshape(shape)
        return weights

    @property
    def _columns(self) -> list[int]:
        """The owners in the order of a share vector: the regions, then the base prompt."""
        return [*range(len(self.spec.regions)), BASE]

    def _shares(self, tokens: Tokens, branches: tuple[str, ...], latent: tuple[int, int]) -> torch.Tensor:
        """Every owner's share of every token of `tokens` per batch item: (items, tokens, owners); (items, owners)
        for one vector per item (the whole image's shares)."""
        whole = torch.tensor([self.adapters.share[o] for o in self._columns], dtype=torch.float64)
        if not tokens.parts:
            return whole.expand(len(branches), -1)
        rows = [torch.cat([self._image(tokens, latent) if part == "image" else self._text(branch, n, whole)
                           for part, n in tokens.parts]) for branch in branches]
        return torch.stack(rows)

    def _image(self, tokens: Tokens, latent: tuple[int, int]) -> torch.Tensor:
        """(image tokens, owners): one-hot owners as the regional mask gives them, or the couple blend's weights."""
        cover = (self.spec.coverage_at(latent, tokens.stride) if self.family.multiscale
                 else self.spec.coverage(tokens.grid)).flatten(1).double()
        if self.method == "couple":
            base = self.spec.base.weight if self.spec.base is not None else 0.0
            shares = torch.cat([cover, torch.full((1, cover.shape[1]), base, dtype=torch.float64)])
            return (shares / shares.sum(0, keepdim=True)).T
        owners = owners_of(cover)
        return F.one_hot(torch.where(owners == BASE, len(self.spec.regions), owners), len(self._columns)).double()

    def _text(self, branch: str, count: int, whole: torch.Tensor) -> torch.Tensor:
        """(text tokens, owners): each token's prompt; the shared negative, and padding, take the whole image's."""
        self.encoded.check_text_tokens("a LoRA layer", count, branch)
        owners = self.encoded.text_owners(branch)
        shared = branch == "uncond" and not self.encoded.regional_negatives
        return torch.stack([whole if shared or owner == PAD else F.one_hot(
            torch.tensor(self._columns.index(owner)), len(self._columns)).double() for owner in owners.tolist()])
