"""RoPE as Flux builds it, and position shifts for style keys (scsa_core.rope); no ComfyUI.

The reference here is RoPE written as complex multiplication: channel pair ``(2k, 2k+1)`` is the
complex number ``x_2k + i x_2k+1``, multiplied by ``exp(i * id[axis(k)] * theta ** (-2j / d_axis))``.
"""
from __future__ import annotations

import pytest
import torch

from scsa_core.rope import (apply_rotation, compose_rotations, offset_rotation, rope_rotation,
                            shift_keys)

FLUX1_AXES, FLUX1_THETA = [8, 12, 12], 10000  # scripts/tiny_models.py's tiny Flux.1 (index, row, col)
FLUX2_AXES, FLUX2_THETA = [8, 8, 8, 8], 2000


def _grid_ids(h, w, axes=3, column_offset=0.0):
    """Flux image ids ``[1, h*w, axes]``: (index 0, row, column [, 0]) row-major."""
    ids = torch.zeros(h, w, axes, dtype=torch.float64)
    ids[..., 1] = torch.arange(h, dtype=torch.float64)[:, None]
    ids[..., 2] = torch.arange(w, dtype=torch.float64)[None, :] + column_offset
    return ids.reshape(1, h * w, axes)


def _complex_rope(x, ids, axes_dim, theta):
    """x ``[B, H, L, D]`` rotated by RoPE at ``ids [B, L, n_axes]``, via complex numbers (float64)."""
    freqs = []
    for axis, dim in enumerate(axes_dim):
        j = torch.arange(dim // 2, dtype=torch.float64)
        freqs.append((axis, theta ** (-2 * j / dim)))
    angles = torch.cat([ids[..., axis, None] * f for axis, f in freqs], dim=-1)  # [B, L, D/2]
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(angles), angles)[:, None]
    return torch.stack([z.real, z.imag], dim=-1).reshape(x.shape)


def _keys(dim, tokens=12, seed=0, dtype=torch.float64):
    return torch.randn(2, 3, tokens, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("axes_dim,theta", [(FLUX1_AXES, FLUX1_THETA), (FLUX2_AXES, FLUX2_THETA)])
def test_rotation_is_rope_as_complex_multiplication(axes_dim, theta):
    ids = _grid_ids(3, 4, len(axes_dim)).expand(2, -1, -1)
    ids = ids + torch.tensor([2.0] + [0.0] * (len(axes_dim) - 1))  # a nonzero index axis too
    pe = rope_rotation(ids, axes_dim, theta, dtype=torch.float64)
    assert pe.shape == (2, 1, 12, sum(axes_dim) // 2, 2, 2)
    keys = _keys(sum(axes_dim))
    torch.testing.assert_close(apply_rotation(keys, pe), _complex_rope(keys, ids, axes_dim, theta),
                               rtol=0, atol=1e-12)


def test_shifting_keys_equals_rope_at_shifted_ids():
    h, w = 3, 4
    keys = _keys(sum(FLUX1_AXES))
    positioned = apply_rotation(keys, rope_rotation(_grid_ids(h, w), FLUX1_AXES, FLUX1_THETA, torch.float64))
    shifted = shift_keys(positioned, (0, 0, w), FLUX1_AXES, FLUX1_THETA)
    at_shifted_ids = _complex_rope(keys, _grid_ids(h, w, column_offset=w), FLUX1_AXES, FLUX1_THETA)
    torch.testing.assert_close(shifted, at_shifted_ids, rtol=0, atol=1e-12)
    assert (shifted - positioned).abs().max() > 0.1  # the shift moves them


@pytest.mark.parametrize("axes_dim,theta,a,b", [
    (FLUX1_AXES, FLUX1_THETA, (0, 0, 7), (0, 0, 5)),
    (FLUX1_AXES, FLUX1_THETA, (1, 3, 0), (0, -2, 16)),
    (FLUX2_AXES, FLUX2_THETA, (0, 0, 9, 0), (1, 4, 2, 0)),
])
def test_shift_by_a_then_b_is_shift_by_a_plus_b(axes_dim, theta, a, b):
    keys = _keys(sum(axes_dim))
    total = tuple(x + y for x, y in zip(a, b))
    twice = shift_keys(shift_keys(keys, a, axes_dim, theta), b, axes_dim, theta)
    torch.testing.assert_close(twice, shift_keys(keys, total, axes_dim, theta), rtol=0, atol=1e-12)
    composed = compose_rotations(offset_rotation(a, axes_dim, theta, torch.float64),
                                 offset_rotation(b, axes_dim, theta, torch.float64))
    torch.testing.assert_close(composed, offset_rotation(total, axes_dim, theta, torch.float64),
                               rtol=0, atol=1e-12)


def test_logits_are_invariant_to_a_common_shift_and_not_to_a_key_shift():
    h, w = 3, 4
    pe = rope_rotation(_grid_ids(h, w), FLUX1_AXES, FLUX1_THETA, torch.float64)
    queries = apply_rotation(_keys(sum(FLUX1_AXES), seed=1), pe)
    keys = apply_rotation(_keys(sum(FLUX1_AXES), seed=2), pe)
    logits = queries @ keys.transpose(-1, -2)
    offset = (0, 5, w)
    common = (shift_keys(queries, offset, FLUX1_AXES, FLUX1_THETA)
              @ shift_keys(keys, offset, FLUX1_AXES, FLUX1_THETA).transpose(-1, -2))
    torch.testing.assert_close(common, logits, rtol=0, atol=1e-12)
    keys_only = queries @ shift_keys(keys, offset, FLUX1_AXES, FLUX1_THETA).transpose(-1, -2)
    assert (keys_only - logits).abs().max() > 0.1


def test_shared_mode_leaves_keys_alone_and_unknown_modes_are_refused():
    keys = _keys(sum(FLUX1_AXES))
    assert shift_keys(keys, (0, 0, 4), FLUX1_AXES, FLUX1_THETA, mode="shared") is keys
    with pytest.raises(ValueError, match="rope_mode"):
        shift_keys(keys, (0, 0, 4), FLUX1_AXES, FLUX1_THETA, mode="band")
    with pytest.raises(ValueError, match="axes"):
        offset_rotation((0, 4), FLUX1_AXES, FLUX1_THETA)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_keys_keep_their_dtype_and_rotate_in_float32(dtype):
    keys = _keys(sum(FLUX1_AXES), dtype=dtype)
    shifted = shift_keys(keys, (0, 0, 4), FLUX1_AXES, FLUX1_THETA)
    assert shifted.dtype == dtype
    exact = shift_keys(keys.double(), (0, 0, 4), FLUX1_AXES, FLUX1_THETA)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(shifted.double(), exact, rtol=tolerance, atol=tolerance)
