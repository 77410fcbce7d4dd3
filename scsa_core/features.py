"""Feature storage: the block inputs recorded by the inversions, read back during sampling.

One entry per (timestep, block) holds the block input (before ``norm1``) of every inverted
stream, stacked ``[S, N, C]`` in the order of ``streams``. Everything SCSA and StyleID need can
be recomputed from these with the block's own layers (spec section 1), so the bank stores
inputs, not projections: a quarter of the memory of q/k/v per stream.
"""
from __future__ import annotations

from typing import Hashable, Iterable

import torch

from .block import ReferenceInputs

__all__ = ["STREAMS", "FeatureBank"]

STREAMS = ("content", "style", "content_map", "style_map")


class FeatureBank:
    """Block inputs per ``(t, block)``, kept in ``dtype`` on ``device``.

    Written once by an inversion (``record``), then only read: sampling never mutates it,
    so one bank can serve any number of sampler runs.
    """

    def __init__(self, streams: Iterable[str], dtype: torch.dtype = torch.float16,
                 device: torch.device | str = "cpu"):
        self.streams = tuple(streams)
        unknown = set(self.streams) - set(STREAMS)
        if unknown or len(set(self.streams)) != len(self.streams) or not {"content", "style"} <= set(self.streams):
            raise ValueError(f"streams must include content and style, from {STREAMS}; got {self.streams}")
        self.dtype = dtype
        self.device = torch.device(device)
        self._entries: dict[tuple[int, Hashable], torch.Tensor] = {}

    def record(self, t: int, block: Hashable, block_inputs: torch.Tensor) -> None:
        """Store ``block_inputs`` ``[S, N, C]`` (one row per stream) under ``(t, block)``."""
        if block_inputs.shape[0] != len(self.streams):
            raise ValueError(f"expected {len(self.streams)} streams, got batch {block_inputs.shape[0]}")
        self._entries[(int(t), block)] = block_inputs.detach().to(self.device, self.dtype, copy=True)

    def has(self, t: int, block: Hashable) -> bool:
        return (int(t), block) in self._entries

    def references(self, t: int, block: Hashable, dtype: torch.dtype,
                   device: torch.device | str) -> ReferenceInputs:
        """The recorded inputs at ``(t, block)`` as :class:`ReferenceInputs` (``[1, N, C]`` each)."""
        stacked = self._entries[(int(t), block)].to(device=device, dtype=dtype, non_blocking=True)
        rows = {name: stacked[i:i + 1] for i, name in enumerate(self.streams)}
        return ReferenceInputs(content=rows["content"], style=rows["style"],
                               content_map=rows.get("content_map"), style_map=rows.get("style_map"))

    @property
    def timesteps(self) -> list[int]:
        return sorted({t for t, _ in self._entries})

    @property
    def blocks(self) -> list[Hashable]:
        return sorted({b for _, b in self._entries}, key=repr)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
