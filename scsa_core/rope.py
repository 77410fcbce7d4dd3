"""Rotary position embeddings (RoPE) as Flux builds them, and position shifts for style keys.

ComfyUI's Flux (``comfy/ldm/flux``) gives each token integer ids on a few axes (Flux.1: index,
row, column; Flux.2 adds a fourth) and turns them into a *rotation* tensor ``pe`` of shape
``[B, 1, L, D/2, 2, 2]``: for channel pair ``k`` (channels ``2k, 2k+1``) a 2x2 matrix
``[[cos a, -sin a], [sin a, cos a]]`` with ``a = id[axis(k)] * omega_k``. The pairs are split
between the axes by ``axes_dim`` (``sum(axes_dim) = D``), and on each axis of width ``d``
``omega = theta ** -(2j / d)`` for ``j < d / 2``. This module rebuilds that math in pure torch.

Why shift style keys: with the same ids as the content grid, RoPE biases every query towards
the style token at the *same* coordinates, which copies the style's layout (docs/method.md §15).
Rotations compose additively, ``R(a) R(b) = R(a + b)``, so one extra rotation by a constant id
offset moves the keys to other positions, whether RoPE was applied before or not; and the
logits ``q . k`` only depend on ``id_q - id_k``, so a shift common to queries and keys changes
nothing.

Rotation tensors here always have the ``pe`` layout ``[..., L, D/2, 2, 2]``, broadcast against
``x [..., L, D]`` (for keys ``[B, H, L, D]``: ``[B or 1, 1, L or 1, D/2, 2, 2]``).
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["ROPE_MODES", "axis_frequencies", "rotation_from_angles", "rope_rotation",
           "offset_rotation", "compose_rotations", "apply_rotation", "shift_keys"]

ROPE_MODES = ("shift", "shared")


def axis_frequencies(dim: int, theta: float) -> torch.Tensor:
    """The angular frequencies of one axis of width ``dim``: ``float64 [dim / 2]``,
    ``theta ** -(2j / dim)`` (the same float64 values as ComfyUI's ``rope``)."""
    if dim % 2:
        raise ValueError(f"a RoPE axis needs an even width, got {dim}")
    exponents = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64)
    return 1.0 / (theta ** exponents)


def rotation_from_angles(angles: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Angles ``[..., D/2]`` -> rotations ``[..., D/2, 2, 2]`` in ``dtype``.

    cos and sin are taken in the angles' dtype (float64 from :func:`rope_rotation`) and then
    cast, so float32 rotations match ComfyUI's and float64 ones keep full precision.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    matrix = torch.stack([cos, -sin, sin, cos], dim=-1)
    return matrix.reshape(*angles.shape, 2, 2).to(dtype)


def _angles(ids: torch.Tensor, axes_dim: Sequence[int], theta: float) -> torch.Tensor:
    """ids ``[..., n_axes]`` -> angles ``float64 [..., sum(axes_dim) / 2]``, axis by axis."""
    if ids.shape[-1] != len(axes_dim):
        raise ValueError(f"ids have {ids.shape[-1]} axes but axes_dim has {len(axes_dim)}")
    # ids pass through float32 first because ComfyUI's rope does so (large ids round there).
    positions = ids.to(torch.float32).to(torch.float64)
    per_axis = [positions[..., axis, None] * axis_frequencies(dim, theta).to(ids.device)
                for axis, dim in enumerate(axes_dim)]
    return torch.cat(per_axis, dim=-1)


def rope_rotation(ids: torch.Tensor, axes_dim: Sequence[int], theta: float,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What ComfyUI's ``EmbedND(dim, theta, axes_dim)(ids)`` gives, in pure torch.

    ids: ``[B, L, n_axes]`` -> ``pe [B, 1, L, D/2, 2, 2]`` in ``dtype`` (float32 as ComfyUI;
    float64 for exact tests).
    """
    return rotation_from_angles(_angles(ids, axes_dim, theta), dtype).unsqueeze(1)


def offset_rotation(offset: Sequence[float], axes_dim: Sequence[int], theta: float,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The rotation that moves every token by the same id ``offset`` (one number per axis).

    E.g. Flux.1, ids (index, row, column), a ``w``-column grid: ``offset = (0, 0, w)`` puts the
    style just right of the content (AlignedGen's ShiftPE). Returns ``[1, 1, 1, D/2, 2, 2]``,
    which broadcasts over every batch row, head and token.
    """
    ids = torch.as_tensor([float(o) for o in offset], dtype=torch.float64, device=device)
    angles = _angles(ids, axes_dim, theta)
    return rotation_from_angles(angles, dtype).reshape(1, 1, 1, -1, 2, 2)


def compose_rotations(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """The rotation ``then . first`` (apply ``first``, then ``then``); ``[..., D/2, 2, 2]`` each,
    broadcast. Rotations commute, so the order only matters for rounding."""
    return torch.matmul(then, first)


def _compute_dtype(x: torch.Tensor, rotation: torch.Tensor) -> torch.dtype:
    # Rotate at no less than float32 (as ComfyUI does), in float64 when either side is float64.
    return torch.promote_types(torch.promote_types(x.dtype, rotation.dtype), torch.float32)


def apply_rotation(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2k, 2k+1)`` of ``x [..., L, D]`` by ``rotation [..., L|1, D/2, 2, 2]``.

    The same map as ComfyUI's ``apply_rope1`` (and, for float32 rotations, the same bits);
    returns ``x``'s shape and dtype.
    """
    dtype = _compute_dtype(x, rotation)
    pairs = x.to(dtype).reshape(*x.shape[:-1], -1, 1, 2)
    rotation = rotation.to(dtype)
    # addcmul as in ComfyUI (one fused multiply-add), so float32 results match its bit for bit.
    rotated = torch.addcmul(rotation[..., 0] * pairs[..., 0], rotation[..., 1], pairs[..., 1])
    return rotated.reshape(x.shape).to(x.dtype)


def shift_keys(keys: torch.Tensor, offset: Sequence[float], axes_dim: Sequence[int], theta: float,
               mode: str = "shift") -> torch.Tensor:
    """Style keys ``[B, H, L, D]`` moved by the id ``offset`` (``mode="shift"``) or left where
    they are (``mode="shared"``, the UNet-like behaviour). Works on keys before or after RoPE."""
    if mode not in ROPE_MODES:
        raise ValueError(f"rope_mode must be one of {ROPE_MODES}, got {mode!r}")
    if mode == "shared":
        return keys
    rotation = offset_rotation(offset, axes_dim, theta, torch.promote_types(keys.dtype, torch.float32),
                               keys.device)
    return apply_rotation(keys, rotation)
