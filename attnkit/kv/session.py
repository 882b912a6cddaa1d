"""`attnkit.kv.record` and `attnkit.kv.inject`: K/V controls on a pipeline's self-attention, one `with` block each.

    store = attnkit.kv.KVStore()
    with attnkit.kv.record(pipe, store, method="masactrl"):
        reference = pipe(prompt, generator=torch.Generator().manual_seed(0)).images[0]
    with attnkit.kv.inject(pipe, store, method="masactrl"):        # or "masactrl-union", "style-aligned"
        image = pipe(other_prompt, generator=torch.Generator().manual_seed(0)).images[0]

A method (`attnkit.kv.methods`) sets the sites, steps and use of the reference's keys and values as its authors' code
does. Without one, the default is attnkit's own setting (`kv-extend`): the reference's keys and values join the
image's own where image tokens attend to image tokens, in the family's decoder stage where it has one (the UNet's
up-block self-attention; on SD3 and Flux every joint and single-stream site, whose text tokens stay), every step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import AttnkitError
from ..session import Session
from ..sites import Site
from ..state import StepRange
from .control import KVControl, Mode
from .methods import setup
from .places import IMAGE_KINDS, chosen_sites, default_sites
from .store import KVStore

__all__ = ["IMAGE_KINDS", "chosen_sites", "default_sites", "inject", "record"]

def record(pipe: Any, store: KVStore, sites_: Iterable[Site] | None = None, *, method: str | None = None,
           **selection: Any) -> Session:
    """A session that puts the image K/V (and query statistics) of every selected site, step and CFG branch into
    `store`; with `method` (and its options), at the sites that method reads (`attnkit.kv.methods`), and the
    GroupNorm statistics it shares (StyleAligned's `shared_group_norm`)."""
    if method is not None:
        _no_sites(method, sites_, selection, {})
        chosen = setup(pipe, method, selection, video=False)
        return Session(pipe, [(KVControl(record=[store], shared_group_norm=chosen.group_norms), chosen.sites)])
    return Session(pipe, [(KVControl(record=[store]), chosen_sites(pipe, sites_, selection))])


def inject(
    pipe: Any,
    references: KVStore | Sequence[KVStore],
    mode: Mode | None = None,
    *,
    method: str | None = None,
    steps: StepRange | None = None,
    weights: Sequence[float] | None = None,
    record: Sequence[KVStore] = (),
    sites_: Iterable[Site] | None = None,
    **selection: Any,
) -> Session:
    """A session that attends to the references' K/V. With `method` ("masactrl", "masactrl-union", "style-aligned",
    "kv-extend"; `attnkit.kv.methods`), as that method's code does, its options passed by their names
    (`start_step=4, start_layer=10`); else at the selected sites (default `default_sites`), in `steps`, by `mode`
    (default "extend"; see `KVControl`). Records this run's own K/V into `record` stores (a video's previous
    frame)."""
    load = [references] if isinstance(references, KVStore) else list(references)
    if method is None:
        control = KVControl(load, record, mode or "extend", steps or (0, None), weights)
        return Session(pipe, [(control, chosen_sites(pipe, sites_, selection))])
    _no_sites(method, sites_, selection, {"mode": mode, "steps": steps, "weights": weights})
    chosen = setup(pipe, method, selection, video=False)
    control = KVControl(load, record, chosen.mode, chosen.steps, when=chosen.when, adain=chosen.adain,
                        keys_scale=chosen.keys_scale, shared_group_norm=chosen.group_norms,
                        foreground=chosen.foreground)
    return Session(pipe, [(control, chosen.sites)])


def _no_sites(method: str, sites_: Any, selection: dict[str, Any], settings: dict[str, Any]) -> None:
    """An error where a method's own sites, mode or steps are given too."""
    given = [name for name, value in settings.items() if value is not None] + (["sites_"] if sites_ is not None else [])
    given += [name for name in selection if name in ("kind", "block", "resolution", "index", "names", "where")]
    if given:
        raise AttnkitError(f"method {method!r} sets its own sites, mode and steps as its authors' code does; leave out "
                           f"{', '.join(given)}, or give no method to choose them yourself.")
