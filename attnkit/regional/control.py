"""The regional-prompting `Control`: applies the regional mask at the sites it is installed on, in its step range.

Each call reads the step and the CFG branches from `call.state`, picks the rules active at that step, and looks up
(or compiles once) the `Plan` for the call's token layout, image grid, branches, rules, device and dtype. It sets
`call.mask` to the plan's dense mask, lazily (built only when another control reads it, e.g. for probabilities), so
that every other control on the site sees the attention that really happens, and computes the attention with the
plan's split kernel; if another control changed the mask after it, the kernel falls back to the dense mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import torch

from .. import ops
from ..errors import AttnkitError
from ..processors import AttentionCall, Control, TokenLayout
from ..state import StepRange, in_steps
from .encode import Encoded
from .mask import SHARED, Plan, Rules
from .spec import RegionSpec, owners_of

__all__ = ["RegionalControl", "Schedule", "StepRange"]


@dataclass(frozen=True)
class Schedule:
    """When each part of the mask is on: the text parts in `steps`, image isolation in `image_isolation_steps`."""

    rules: Rules
    steps: StepRange = (0, None)
    image_isolation_steps: StepRange = (0, None)

    def at(self, step: int | None) -> Rules | None:
        """The rules in force at `step`, or None where the call is plain joint attention."""
        masked = _inside(self.steps, step)
        isolated = self.rules.image_isolation and _inside(self.image_isolation_steps, step)
        return self._phases[masked, isolated]

    @cached_property
    def _phases(self) -> dict[tuple[bool, bool], Rules | None]:
        """The rules of each (text parts on, image isolation on) phase, built once."""
        return {(True, True): self.rules, (True, False): replace(self.rules, image_isolation=False),
                (False, True): replace(self.rules, image_to_text=False, text_to_image=False, text_isolation=False,
                                       hide_pads=False, base_bias=0.0, text_bias=0.0),
                (False, False): None}


def _inside(steps: StepRange, step: int | None) -> bool:
    if step is None:
        if steps == (0, None):
            return True
        raise AttnkitError(f"the mask is scheduled for steps {list(steps)}, but this denoiser call has no step: run "
                           "the pipeline inside the `with attnkit.regional(...)` block.")
    return in_steps(steps, step)


class RegionalControl(Control):
    """Regional joint-attention mask for one spec and its encoded text segments."""

    name = "regional"
    masks = True

    def __init__(self, spec: RegionSpec, encoded: Encoded, schedule: Schedule,
                 kernel: Literal["split", "dense"] = "split"):
        self.spec = spec
        self.encoded = encoded
        self.schedule = schedule
        self.kernel = kernel
        self._plans: dict[tuple, Plan] = {}
        self._owners: dict[tuple, torch.Tensor] = {}

    def before(self, call: AttentionCall) -> None:
        rules = self.schedule.at(call.state.step)
        if rules is None:
            return
        plan = self.plan(call, rules)
        if plan.noop:
            return
        # keys another control appended (a reference image's tokens) are open to every query: the regions decide who
        # sees which text, not who sees the reference
        extra = call.k.shape[2] - plan.tokens
        if call.has_mask:
            call.mask = _combine(call.mask, ops.allow_extra_keys(plan.mask, extra), call.q.dtype)
            return
        call.set_mask(lambda: ops.allow_extra_keys(plan.mask, extra), tag=plan)
        if self.kernel == "split" and extra == 0:
            call.use_kernel(lambda c: plan.attend(c.q, c.k, c.v, c.scale) if c.mask_is(plan) else _dense(c),
                            self.name)

    def plan(self, call: AttentionCall, rules: Rules) -> Plan:
        """The compiled mask for this call's layouts, grid, branches, rules, device and dtype (cached)."""
        layouts = call.layouts()
        branches = call.state.branches or ("cond",) * call.q.shape[0]
        key = (layouts, call.grid, _level(call), branches, rules, call.q.device, call.q.dtype)
        if key not in self._plans:
            keys = [_key_parts(call, layout) for layout in layouts]
            items = [(layout.queries, self._owners_of(call, branch, layout.queries))
                     for layout, branch in zip(layouts, branches, strict=True)]
            key_items = None if keys[0] is None else [(parts, self._owners_of(call, branch, parts))
                                                      for parts, branch in zip(keys, branches)]
            self._plans[key] = Plan(items, rules, call.q.dtype, call.q.device, key_items)
        return self._plans[key]

    def _owners_of(self, call: AttentionCall, branch: str, parts: tuple[tuple[str, int], ...]) -> torch.Tensor:
        """Owner of every token of `parts` (the call's queries or keys) in `branch`, in the call's order."""
        pieces = []
        for part, n in parts:
            if part == "image":
                image = self.image_owners(call)
                if branch == "uncond" and not self.encoded.regional_negatives:
                    image = torch.zeros_like(image)  # the global negative is one whole-image region: plain attention
                pieces.append(image)
                continue
            if part == "pad":  # tokens the model adds to the text (registers): seen by and seeing everything
                pieces.append(torch.full((n,), SHARED, dtype=torch.long))
                continue
            self.encoded.check_text_tokens(call.site.name, n, branch)
            pieces.append(self.encoded.text_owners(branch))
        return torch.cat(pieces)

    def image_owners(self, call: AttentionCall) -> torch.Tensor:
        """The region of every image token of the call (row-major): on a UNet from the latent grid's coverage
        averaged down to the site's level, elsewhere from the coverage of the token grid."""
        level = _level(call)
        if level not in self._owners:
            if call.grid is None:
                raise AttnkitError(f"{call.site.name}: the image token grid is unknown; run the pipeline inside the "
                                   "`with attnkit.regional(...)` block.")
            if level[1] is None:
                self._owners[level] = self.spec.check_grid(call.grid)
            else:
                self.spec.check_grid(level[1])  # every latent pixel has a prompt and every region a pixel
                self._owners[level] = owners_of(self.spec.coverage_at(level[1], call.site.stride))
        return self._owners[level]


def _key_parts(call: AttentionCall, layout: TokenLayout) -> tuple[tuple[str, int], ...] | None:
    """The key parts a regional mask covers apart from the queries' own tokens: None in self- and joint attention
    (the queries' own tokens come first among the keys), the text in cross-attention from the image."""
    if layout.keys[: len(layout.queries)] == layout.queries:
        return None
    if layout.queries == layout.queries[:1] and layout.queries[0][0] == "image" and layout.keys[0][0] == "text":
        return layout.keys[:1]
    raise AttnkitError(f"{call.site.name}: regional masks need the queries' own tokens as the first keys, or image "
                       f"queries over text keys; got queries {layout.queries} and keys {layout.keys}.")


def _level(call: AttentionCall) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """What fixes the image owners of a call: the token grid, and on a UNet (whose regions are laid on the latent
    grid and averaged down level by level) the latent size it was derived from (latents of 15 and 16 rows both give
    8 rows at stride 2, but cover them differently)."""
    return call.grid, call.state.latent if call.site.family.multiscale else None


def _combine(mask: torch.Tensor, regional: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A mask that the pipeline or another control set, intersected with the regional one."""
    if mask.dtype == torch.bool and regional.dtype == torch.bool:
        return mask & regional
    return ops.additive(mask, dtype) + ops.additive(regional, dtype)


def _dense(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.attention(call.q, call.k, call.v, call.mask, call.scale)
