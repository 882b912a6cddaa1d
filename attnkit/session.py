"""Install controls on selected sites of a stock pipeline, and put back exactly what was there on exit.

A session is a context manager. On entry it checks every selected site first (nothing is changed when one cannot be
handled), registers a named diffusers hook on the denoiser that fills the session's `State` from the pipeline before
each forward, and adds its controls to the site processors (and, for controls that name module types, a named hook
on every such module of the models their sites lie in). On exit, also after an exception, it removes its controls and hooks; a
site whose processor has no controls left gets back the very processor object it had before. Sessions nest, and may
end in any order.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook, StateManager

from .errors import AttnkitError
from .families import Family, component_of, denoiser_of, family_of
from .processors import Control, ModuleCall, SiteProcessor, stand_in
from .sites import Site, SiteList, choose
from .state import State, StepReader

__all__ = ["Session", "attach"]


class Session:
    """Controls attached to sites of one pipeline (or denoiser), with the state they read. Sites may lie in the
    denoiser or in other models of the pipeline (a ControlNet: `attnkit.sites(pipe, component="controlnet")`); each
    model the session touches fills the one state before its own forward."""

    def __init__(self, target: Any,
                 placements: Mapping[Control, Iterable[Site]] | Iterable[tuple[Control, Iterable[Site]]]):
        self.target = target
        self.model = denoiser_of(target)
        items = placements.items() if isinstance(placements, Mapping) else placements
        self.placements: list[tuple[Control, SiteList]] = [(control, SiteList(chosen)) for control, chosen in items]
        self.models = {"": self.model} | {site.component: component_of(target, site.component)
                                          for _, chosen in self.placements for site in chosen if site.component}
        self.state = State()
        self._hook_name = f"attnkit.state.{id(self):x}"
        self._installed: list[tuple[torch.nn.Module, SiteProcessor, Control]] = []
        self._hooked: list[torch.nn.Module] = []
        self._active = False

    def __enter__(self) -> Session:
        if self._active:
            raise AttnkitError("this session is already active; make a new one to attach the same controls twice.")
        modules = self._check()
        self.state.reset()
        try:
            for model in self.models.values():
                HookRegistry.check_if_exists_or_initialize(model).register_hook(
                    _StateHook(self.state, self.target, model, family_of(model)), self._hook_name
                )
            for control, chosen in self.placements:
                for site in chosen:
                    self._add(modules[site.name], site, control)
            self._hook_modules()
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def _check(self) -> dict[str, torch.nn.Module]:
        """Every selected site's module, after checking that each one can be taken over; an error lists the rest."""
        named = {component: dict(model.named_modules()) for component, model in self.models.items()}
        modules, refused = {}, []
        for control, chosen in self.placements:
            for site in chosen:
                if site.kind == "linear":
                    raise AttnkitError(
                        f"{site.name} is linear attention (no softmax): no attention probabilities, masks or keys to "
                        "swap exist there, so no attnkit control can run at it. Select other sites, e.g. kind='cross'."
                    )
                module = named[site.component].get(site.model_path)
                if module is None:
                    model = self.models[site.component]
                    raise AttnkitError(f"site {site.name} is not in {type(model).__name__}; "
                                       "take sites from `attnkit.sites()` of the same pipeline.")
                processor = module.get_processor()
                if not isinstance(processor, SiteProcessor) and not site.family.replaces(processor):
                    refused.append((site, type(processor).__name__))
                modules[site.name] = module
                _check_parallel(control, site, processor)
        if refused:
            site = refused[0][0]
            listed = "; ".join(f"{refusal.name}: {cls}" for refusal, cls in refused[:5])
            raise AttnkitError(
                f"attnkit cannot take over {len(refused)} attention site(s), whose processors it cannot replay "
                f"exactly: {listed}{' ...' if len(refused) > 5 else ''}. It composes with the stock processors "
                f"({', '.join(site.family.processors)}): "
                f"{site.family.advice({cls for _, cls in refused}, _model_attr(self.target, site.component))}."
            )
        return modules

    def _add(self, module: torch.nn.Module, site: Site, control: Control) -> None:
        processor = module.get_processor()
        if not isinstance(processor, SiteProcessor):
            processor = stand_in(site, processor)
            module.set_processor(processor)
        processor.entries.append((control, self.state))
        self._installed.append((module, processor, control))

    def _hook_modules(self) -> None:
        """One hook on every module of a type some control names in `modules`, in the models that hold that control's
        sites (every model of the session for a control without sites), running those controls in placement order."""
        wanting: dict[tuple[str, str], tuple[torch.nn.Module, list[Control]]] = {}
        for control, chosen in self.placements:
            if not control.modules:
                continue
            components = dict.fromkeys(site.component for site in chosen) if chosen else self.models
            for component in components:
                for name, module in self.models[component].named_modules():
                    if isinstance(module, control.modules):
                        wanting.setdefault((component, name), (module, []))[1].append(control)
        for (component, name), (module, controls) in wanting.items():
            named = f"{component}.{name}" if component else name
            HookRegistry.check_if_exists_or_initialize(module).register_hook(
                _ModuleHook(named, controls, self.state), self._hook_name)
            self._hooked.append(module)

    def _remove(self) -> None:
        for module in reversed(self._hooked):
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(self._hook_name, recurse=False)
        self._hooked.clear()
        for module, processor, control in reversed(self._installed):
            processor.entries = [(c, s) for c, s in processor.entries if not (c is control and s is self.state)]
            if not processor.entries and module.get_processor() is processor:
                module.set_processor(processor.original)
        self._installed.clear()
        for model in self.models.values():
            registry = HookRegistry.check_if_exists_or_initialize(model)
            if registry.get_hook(self._hook_name) is not None:
                registry.remove_hook(self._hook_name, recurse=False)
        self._active = False


def attach(
    target: Any,
    control: Control,
    sites_: Iterable[Site] | None = None,
    **selection: Any,
) -> Session:
    """A session running `control` at the sites chosen by `sites_` or by `SiteList.select(**selection)` (all by
    default): `with attnkit.attach(pipe, MyControl(), kind="cross") as session: pipe(...)`."""
    return Session(target, [(control, choose(target, sites_, selection))])


class _ModuleHook(ModelHook):
    """Hands one module's forward to the session's controls that name its type; the output one returns replaces the
    module's own, and a second control that returns one too is an error (two replacements cannot compose)."""

    def __init__(self, name: str, controls: list[Control], state: State) -> None:
        super().__init__()
        self.name, self.controls, self.state = name, controls, state

    def new_forward(self, module: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        call = ModuleCall(self.name, module, x, args, kwargs, self.state)
        outputs = [(control, out) for control in self.controls if (out := control.module_forward(call)) is not None]
        if len(outputs) > 1:
            raise AttnkitError(f"{self.name}: {', '.join(repr(c.name) for c, _ in outputs)} each replace this "
                               f"{type(module).__name__}'s output; run them in sessions on different steps or models.")
        return outputs[0][1] if outputs else self.fn_ref.original_forward(x, *args, **kwargs)


def _check_parallel(control: Control, site: Site, processor: object) -> None:
    """Context parallelism splits the sequence across devices: a mask or log-sum-exp over the whole sequence does
    not exist on any one of them, so a control that needs either is refused before anything changes."""
    original = processor.original if isinstance(processor, SiteProcessor) else processor
    if getattr(original, "_parallel_config", None) is None or not (control.needs_lse or control.masks):
        return
    need = "the log-sum-exp" if control.needs_lse else "an attention mask"
    raise AttnkitError(
        f"{control.name!r} needs {need} at {site.name}, which runs under context parallelism (`parallel_config`), "
        "where each device holds only part of the sequence. Run this feature without context parallelism, or "
        "select sites that do not use it."
    )


def _model_attr(target: Any, component: str) -> str:
    """How a user names the model of `component` ("": the denoiser) in their own code."""
    if isinstance(target, torch.nn.Module):
        return "model"
    if component:
        return f"pipe.{component}"
    return "pipe.transformer" if getattr(target, "transformer", None) is not None else "pipe.unet"


def _batch(bound: dict[str, Any]) -> int:
    """The batch size of a DiT forward: of its first image input, a tensor or a list of per-item tensors."""
    for name in ("hidden_states", "x", "sample"):
        value = bound.get(name)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    raise AttnkitError(f"cannot tell the batch size of this denoiser forward (arguments {sorted(bound)}).")


class _ContextName(StateManager):
    """Listens to diffusers' `cache_context("cond" | "uncond")` through the public `set_context`, which diffusers
    calls with the name (up to 0.40) or a `CacheContext` carrying it (later); attnkit keeps no per-context data."""

    def __init__(self) -> None:
        super().__init__(_NoState)
        self.name: str | None = None

    def set_context(self, context: Any) -> None:
        super().set_context(context)
        self.name = getattr(context, "name", context)

    def reset(self, *args: Any, **kwargs: Any) -> None:
        super().reset(*args, **kwargs)
        self.name = None


class _NoState:
    def reset(self) -> None:
        """Nothing to reset."""


class _StateHook(ModelHook):
    """Fills a session's `State` before every denoiser forward: step from the scheduler, CFG branch per batch item,
    latent size and text length from the forward's inputs, as the family describes them."""

    _is_stateful = True

    def __init__(self, state: State, target: Any, model: torch.nn.Module, family: Family):
        super().__init__()
        self.state = state
        self.pipeline = None if isinstance(target, torch.nn.Module) else target
        self.family = family
        self.signature = inspect.signature(type(model).forward)
        self.contexts = _ContextName()
        self.steps = StepReader()
        self.forwards_in_step = 0
        self.guided_batch = (0, 0)  # (run, batch of that run's last guided forward)

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any], dict[str, Any]]:
        bound = self.signature.bind_partial(module, *args, **kwargs).arguments
        family = self.family
        # in the scheduler's units: Flux pipelines, for one, pass the transformer the timestep / 1000
        timestep = family.scheduler_timestep(bound)
        state = self.state
        state.forwards += 1
        state.arguments = bound
        state.latent, state.frames = family.latent_of(bound, module)
        state.text_tokens = family.text_tokens(bound)
        items = family.item_text_tokens(bound) if family.item_text_tokens is not None else ()
        state.item_text_tokens = items if len(set(items)) > 1 else ()
        state.timestep = None if timestep is None else float(torch.as_tensor(timestep).flatten()[0])
        step = state.step
        state.step, state.num_steps = self.steps.read(getattr(self.pipeline, "scheduler", None), timestep,
                                                      getattr(self.pipeline, "num_timesteps", None))
        state.timesteps = self.steps.run_timesteps(state.num_steps) if state.step is not None else ()
        self.forwards_in_step = self.forwards_in_step + 1 if state.step == step and step is not None else 0
        state.branches = self._branches(_batch(bound), bound)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.state.arguments = None  # the forward's own inputs, held only while it runs
        return output

    def _branches(self, batch: int, bound: Mapping[str, Any]) -> tuple[str, ...]:
        if self.contexts.name in ("cond", "uncond"):
            return (self.contexts.name,) * batch
        guided = self.pipeline is not None and self.family.guided(self.pipeline, bound)
        if self.family.cfg == "sequential":  # cond, then uncond, as forwards of their own
            return ("uncond" if guided and self.forwards_in_step % 2 else "cond",) * batch
        if guided and batch % 2 == 0 and not self._guidance_stopped(batch):
            self.guided_batch = (self.steps.runs, batch)
            first, second = ("cond", "uncond") if self.family.cfg == "cond-first" else ("uncond", "cond")
            return (first,) * (batch // 2) + (second,) * (batch // 2)
        return ("cond",) * batch

    def _guidance_stopped(self, batch: int) -> bool:
        """Whether a guided pipeline has stopped guiding part-way through this run (Z-Image's `cfg_truncation`
        drops the uncond half of the batch once its step is reached while `do_classifier_free_guidance` stays true):
        the batch is half the one this run guided before."""
        run, guided = self.guided_batch
        return run == self.steps.runs and batch * 2 == guided

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        self.forwards_in_step = 0
        self.guided_batch = (0, 0)
        return module
