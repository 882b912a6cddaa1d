"""LoRA adapters (peft, as diffusers loads them) of a pipeline's models, and their forward with weights per token.

A peft LoRA layer adds, for each active adapter, `lora_B(lora_A(x)) * scaling` to its base layer's output. The same
sum with each adapter's delta multiplied by a weight per batch item and token (`weighted_forward`) applies an
adapter to some tokens only: one region's image and text tokens (a LoRA per region), one prompt of a batch (a
text encoder encoding each region's prompt with that region's adapters). Nothing of peft's state is changed: the
weights act only inside the forwards attnkit hooks, so the pipeline's adapters, their scales and which are active
are as they were once the hooks are gone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook
from peft.tuners.lora import LoraLayer

from .errors import AttnkitError

__all__ = ["LoraLayer", "PerItem", "adapters_of", "lora_layers", "scaling", "weighted_forward"]

#: Weights of the adapters for one forward: a number, or a tensor that broadcasts against the layer's output; or a
#: function of the output's shape that gives them (a strided convolution's output has a grid of its own).
Weights = Mapping[str, float | torch.Tensor]
WeightsOf = Weights | Callable[[torch.Size], Weights]


def lora_layers(model: torch.nn.Module) -> list[tuple[str, LoraLayer]]:
    """(name in `model`, layer) of every peft LoRA layer of `model`, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def adapters_of(model: torch.nn.Module) -> set[str]:
    """The names of the LoRA adapters loaded into `model`."""
    return {name for _, layer in lora_layers(model) for name in layer.lora_A}


def scaling(layer: LoraLayer, adapter: str) -> float:
    """`adapter`'s scale in `layer` at weight 1, as peft sets it when the adapter is loaded or set to weight 1
    (lora_alpha / r, or / sqrt(r) for rank-stabilised LoRA): what a weight given to attnkit multiplies."""
    rank = layer.r[adapter]
    return layer.lora_alpha[adapter] / (math.sqrt(rank) if layer.use_rslora.get(adapter, False) else rank)


def weighted_forward(layer: LoraLayer, x: torch.Tensor, args: tuple, kwargs: dict, weights: WeightsOf,
                     controlled: Iterable[str], name: str) -> torch.Tensor:
    """The layer's output with each adapter of `weights` added at its weight times its scale at weight 1, as peft
    adds an active adapter (`lora_B(lora_A(dropout(x))) * scaling`), and the layer's other active adapters (those
    not `controlled` here) as peft adds them; adapters the layer does not hold add nothing."""
    if layer.merged:
        raise AttnkitError(f"{name}: LoRA adapters are fused into this layer's weights (`fuse_lora`), so they cannot "
                           "be applied to some tokens only: call `pipe.unfuse_lora()` first.")
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    weights = weights(result.shape) if callable(weights) else weights
    controlled = controlled if isinstance(controlled, (set, frozenset)) else set(controlled)
    kept = {} if layer.disable_adapters else {
        adapter: layer.scaling[adapter] / scaling(layer, adapter) for adapter in layer.active_adapters
        if adapter not in controlled and adapter in layer.lora_A}
    for adapter, weight in {**weights, **kept}.items():
        if adapter not in layer.lora_A:
            continue
        if adapter in getattr(layer, "lora_variant", {}):
            raise AttnkitError(f"{name}: adapter {adapter!r} is a LoRA variant (DoRA or another peft variant), whose "
                               "update is not a sum of per-token deltas; attnkit applies plain LoRA adapters only.")
        lora_A, lora_B = layer.lora_A[adapter], layer.lora_B[adapter]
        delta = lora_B(lora_A(layer.lora_dropout[adapter](layer._cast_input_dtype(x, lora_A.weight.dtype))))
        result = result + delta * scaling(layer, adapter) * weight
    return result.to(dtype)


class _Weighted(ModelHook):
    """A LoRA layer's forward with the adapters and weights `weights(name, x)` gives."""

    def __init__(self, name: str, weights: Callable[[str, torch.Tensor], Weights], controlled: set[str]) -> None:
        super().__init__()
        self.name, self.weights, self.controlled = name, weights, controlled

    def new_forward(self, module: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return weighted_forward(module, x, args, kwargs, self.weights(self.name, x), self.controlled, self.name)


class PerItem:
    """A context manager under which every LoRA layer of `models` applies, to batch item i of each forward, the
    adapters of `items[i]` at their weights (none for an empty mapping) in place of the adapters `controlled`; the
    layers' other active adapters apply as before: a batch of prompts each encoded with adapters of its own. Its
    hooks are named and removed on exit, also after an exception."""

    def __init__(self, models: Iterable[torch.nn.Module], items: list[Mapping[str, float]], controlled: set[str],
                 name: str) -> None:
        self.models, self.items, self.name = [m for m in models if m is not None], items, name
        self.controlled = set(controlled)
        self._hooked: list[torch.nn.Module] = []

    def weights(self, layer: str, x: torch.Tensor) -> Weights:
        if x.shape[0] != len(self.items):
            raise AttnkitError(f"{layer}: a forward of {x.shape[0]} items where {len(self.items)} prompts were "
                               "given adapters; encode them in one batch.")
        names = dict.fromkeys(name for item in self.items for name in item)
        shape = (len(self.items),) + (1,) * (x.dim() - 1)
        return {name: torch.tensor([item.get(name, 0.0) for item in self.items], dtype=x.dtype,
                                   device=x.device).reshape(shape) for name in names}

    def __enter__(self) -> PerItem:
        try:
            for model in self.models:
                for name, layer in lora_layers(model):
                    HookRegistry.check_if_exists_or_initialize(layer).register_hook(
                        _Weighted(name, self.weights, self.controlled), self.name)
                    self._hooked.append(layer)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for layer in reversed(self._hooked):
            HookRegistry.check_if_exists_or_initialize(layer).remove_hook(self.name, recurse=False)
        self._hooked.clear()
