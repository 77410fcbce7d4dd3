"""Feature storage: the block inputs recorded by the inversions, read back during sampling.

One entry per (timestep, block) holds the block input (before ``norm1``) of every inverted
stream, one ``[1, N, C]`` tensor per stream. Everything SCSA and StyleID need can be recomputed
from these with the block's own layers (docs/method.md §6), so the bank stores inputs, not
projections: a quarter of the memory of q/k/v per stream.

Streams may be recorded together (one ``[S, N, C]`` batch) or in separate batches: the content
side (content, content map) and the style side (style, style map) of images of different
sizes have different token counts N at the same block. ``grid(block, stream)`` gives the
``h x w`` token grid a stream was recorded at, when the recorder said so.

A bank may also hold only some streams for one step (the ``recompute`` storage): the other
streams then come from the sampling batch itself and are merged in by :meth:`references`.
"""
from __future__ import annotations

from typing import Hashable, Iterable

import torch

from .block import ReferenceInputs
from .styles import MAP_OF, STREAMS, STYLE_IMAGES

__all__ = ["FeatureBank"]


class FeatureBank:
    """Block inputs per ``(t, block)``, kept in ``dtype`` on ``device``.

    Written once by an inversion (``record``), then only read: sampling never mutates it,
    so one bank can serve any number of sampler runs.
    """

    def __init__(self, streams: Iterable[str], dtype: torch.dtype = torch.float16,
                 device: torch.device | str = "cpu"):
        self.streams = tuple(streams)
        unknown = set(self.streams) - set(STREAMS)
        if unknown or len(set(self.streams)) != len(self.streams):
            raise ValueError(f"streams must be distinct names from {STREAMS}; got {self.streams}")
        self.dtype = dtype
        self.device = torch.device(device)
        # (t, block) -> {stream: [1, N_stream, C]}
        self._entries: dict[tuple[int, Hashable], dict[str, torch.Tensor]] = {}
        self._grids: dict[tuple[Hashable, str], tuple[int, int]] = {}

    def record(self, t: int, block: Hashable, block_inputs: torch.Tensor,
               streams: Iterable[str] | None = None, grid: tuple[int, int] | None = None) -> None:
        """Store ``block_inputs`` ``[S, N, C]`` (one row per stream) under ``(t, block)``.

        ``streams``: the names of the rows (default: all of ``self.streams``, in order); streams
        recorded in separate calls may have different ``N``. ``grid``: their ``(h, w)`` token grid.
        """
        names = self.streams if streams is None else tuple(streams)
        if not set(names) <= set(self.streams):
            raise ValueError(f"unknown streams {sorted(set(names) - set(self.streams))}; this bank "
                             f"holds {self.streams}")
        if block_inputs.shape[0] != len(names):
            raise ValueError(f"expected {len(names)} streams, got batch {block_inputs.shape[0]}")
        stored = block_inputs.detach().to(self.device, self.dtype, copy=True)
        entry = self._entries.setdefault((int(t), block), {})
        for row, name in enumerate(names):
            entry[name] = stored[row:row + 1]
            if grid is not None:
                self._grids[(block, name)] = (int(grid[0]), int(grid[1]))

    def grid(self, block: Hashable, stream: str) -> tuple[int, int] | None:
        """The ``(h, w)`` token grid ``stream`` was recorded at in ``block`` (None: not given)."""
        return self._grids.get((block, stream))

    def references(self, t: int, block: Hashable, dtype: torch.dtype, device: torch.device | str,
                   given: dict[str, torch.Tensor] | None = None) -> ReferenceInputs:
        """The recorded inputs at ``(t, block)`` as :class:`ReferenceInputs` (``[1, N, C]`` each).

        ``given``: block inputs of streams this bank does not hold, computed in the same model
        call (recompute storage); they are used as they are.
        """
        entry = self._entries.get((int(t), block), {})
        missing = [name for name in self.streams if name not in entry]
        if missing:
            raise KeyError(f"streams {missing} were not recorded at t={t}, block {block}")
        rows = {name: entry[name].to(device=device, dtype=dtype, non_blocking=True) for name in self.streams}
        rows.update(given or {})
        if not {"content", "style"} <= set(rows):
            raise KeyError(f"content and style are both needed; have {sorted(rows)} at t={t}, block {block}")
        # Several styles: their tokens side by side, in style order (the keys are their union).
        styles = [name for name in STYLE_IMAGES if name in rows]
        maps = [MAP_OF[name] for name in styles if MAP_OF[name] in rows]
        return ReferenceInputs(content=rows["content"], style=_side_by_side([rows[name] for name in styles]),
                               content_map=rows.get("content_map"),
                               style_map=_side_by_side([rows[name] for name in maps]) if maps else None)

    def adopt(self, other: "FeatureBank", names: dict[str, str]) -> None:
        """Take ``other``'s streams ``names`` (its name -> this bank's name) into this bank,
        sharing the tensors (no copy): a reused or saved style joins a new inversion's bank."""
        for (t, block), entry in other._entries.items():
            mine = self._entries.setdefault((t, block), {})
            for source, target in names.items():
                mine[target] = entry[source].to(self.device, self.dtype)
        for (block, source), grid in other._grids.items():
            if source in names:
                self._grids[(block, names[source])] = grid

    def subset(self, names: dict[str, str]) -> "FeatureBank":
        """A new bank holding this bank's streams ``names`` (this name -> new name), sharing the tensors."""
        part = FeatureBank(names.values(), dtype=self.dtype, device=self.device)
        part.adopt(self, names)
        return part

    def entries(self, stream: str) -> dict[tuple[int, Hashable], torch.Tensor]:
        """``(t, block) -> [1, N, C]`` of one stream (for saving)."""
        return {key: entry[stream] for key, entry in self._entries.items() if stream in entry}

    def clear(self) -> None:
        """Forget every entry (the grids stay: they depend on the image sizes only)."""
        self._entries.clear()

    @property
    def timesteps(self) -> list[int]:
        return sorted({t for t, _ in self._entries})

    @property
    def blocks(self) -> list[Hashable]:
        return sorted({b for _, b in self._entries}, key=repr)

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for entry in self._entries.values() for x in entry.values())

    def __len__(self) -> int:
        return len(self._entries)


def _side_by_side(rows: list[torch.Tensor]) -> torch.Tensor:
    """``[1, N_i, C]`` tensors -> ``[1, sum N_i, C]`` (one tensor passes through as it is)."""
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
