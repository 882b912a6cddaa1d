"""A store of self-attention keys and values per (site, step, CFG branch), with a memory budget.

The step is the session state's step, the pipeline loop's index, so a store recorded under one scheduler is read back
at the same loop iterations whatever the scheduler repeats or skips. Entries are the image tokens' K and V after the
projections, q/k norms and rotary embeddings: what attention itself used, so DiT positions stay right on reuse; and
the statistics of their queries (mean and standard deviation over the tokens), for methods that normalise another
image's queries to them (StyleAligned's AdaIN). A store may also keep GroupNorm statistics per (module, step, branch),
for methods that normalise another image's features together with these (StyleAligned's shared GroupNorm).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import AttnkitError

__all__ = ["KVStore", "Entry"]

Entry = tuple[str, int, str]  # (site name, step, branch)


class KVStore:
    """K and V tensors (items, heads, tokens, head_dim) keyed by (site, step, branch).

    `dtype` and `device` say how entries are kept (e.g. float16 on "cpu" to offload); `budget_bytes` bounds what the
    store may hold, and a recording that would pass it is an error naming its size. Putting an existing key replaces
    the entry, which is how a "previous frame" store stays one frame's worth.
    """

    def __init__(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                 budget_bytes: int | None = None):
        if budget_bytes is not None and budget_bytes <= 0:
            raise AttnkitError(f"budget_bytes must be positive, got {budget_bytes}; None means no budget.")
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.budget_bytes = budget_bytes
        self._entries: dict[Entry, tuple[torch.Tensor, ...]] = {}
        self._norms: dict[Entry, tuple[torch.Tensor, ...]] = {}
        self.nbytes = 0

    def put(self, site: str, step: int, branch: str, k: torch.Tensor, v: torch.Tensor,
            queries: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Keep (a copy of) k and v under (site, step, branch), converted to the store's dtype and device, with the
        (mean, std) statistics of their queries if given."""
        self._keep(self._entries, (site, step, branch), (k, v, *(queries or ())))

    def put_norm(self, module: str, step: int, branch: str, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Keep the per-item, per-group mean and (biased) variance a GroupNorm `module` saw under (step, branch)."""
        self._keep(self._norms, (module, step, branch), (mean, var))

    def _keep(self, entries: dict[Entry, tuple[torch.Tensor, ...]], key: Entry,
              tensors: tuple[torch.Tensor, ...]) -> None:
        kept = tuple(t.detach().to(device=self.device or t.device, dtype=self.dtype or t.dtype, copy=True)
                     for t in tensors)
        old = entries.get(key)
        size = self.nbytes + _bytes(*kept) - (0 if old is None else _bytes(*old))
        if self.budget_bytes is not None and size > self.budget_bytes:
            raise AttnkitError(
                f"the K/V store would hold {size / 2**20:.1f} MiB, over its budget of {self.budget_bytes / 2**20:.1f} "
                f"MiB ({len(self)} entries so far, at {key[0]}, step {key[1]}). Record fewer sites or steps, keep "
                "entries as float16 (dtype=torch.float16), or raise budget_bytes."
            )
        entries[key] = kept
        self.nbytes = size

    def get(self, site: str, step: int, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) under (site, step, branch)."""
        return self._entry(site, step, branch)[:2]

    def query_statistics(self, site: str, step: int, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) over the tokens of the queries whose K and V are under (site, step, branch)."""
        entry = self._entry(site, step, branch)
        if len(entry) < 4:
            raise AttnkitError(f"the K/V store's entry for {site} at step {step} has no query statistics: record it "
                               "with `attnkit.kv.record`, which keeps them.")
        return entry[2:4]

    def norm_statistics(self, module: str, step: int, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) per item and group of GroupNorm `module`'s input under (step, branch)."""
        key = (module, step, branch)
        if key not in self._norms:
            raise AttnkitError(
                f"the K/V store has no GroupNorm statistics for {module} at step {step}, branch {branch!r}: record the "
                "reference with shared_group_norm=True, the same number of steps and the same guidance as this run.")
        return self._norms[key]

    def _entry(self, site: str, step: int, branch: str) -> tuple[torch.Tensor, ...]:
        key = (site, step, branch)
        if key not in self._entries:
            known = sorted({s for _, s, _ in self._entries})
            raise AttnkitError(
                f"the K/V store has no entry for {site} at step {step}, branch {branch!r} (it holds steps "
                f"{known[:8]}{' ...' if len(known) > 8 else ''} of {len({s for s, _, _ in self._entries})} sites). "
                "Record the reference with the same sites, number of steps, scheduler and guidance as this run."
            )
        return self._entries[key]

    def __contains__(self, key: Entry) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._norms.clear()
        self.nbytes = 0

    def __repr__(self) -> str:
        sites = len({s for s, _, _ in self._entries})
        steps = len({s for _, s, _ in self._entries})
        norms = f", GroupNorm statistics of {len({m for m, _, _ in self._norms})} modules" if self._norms else ""
        return f"KVStore({len(self)} entries: {sites} sites x {steps} steps{norms}, {self.nbytes / 2**20:.2f} MiB)"


def _bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
