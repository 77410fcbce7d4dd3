"""Convenience mask node: ComfyUI core has no node that stacks single masks into one batch.

SCSASemanticFromMasks takes a MASK batch per image (mask i of the content = mask i of the
style). Masks made with core nodes (ImageColorToMask, ImageToMask, a segmentation pack's
single masks, ...) come one per socket; SCSAMaskBatch stacks them in socket order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from comfy_api.latest import io

CATEGORY = "SCSA"
MAX_MASKS = 8


def _as_batch(mask: torch.Tensor, name: str) -> torch.Tensor:
    """MASK ``[H, W]`` or ``[B, H, W]`` (or ``[B, 1, H, W]``) -> float ``[B, H, W]``."""
    if mask.dim() == 2:
        mask = mask[None]
    elif mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"{name}: expected a MASK [height, width] or [batch, height, width], "
                         f"got shape {tuple(mask.shape)}")
    return mask.float()


def stack_masks(masks: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """Concatenate masks (each a single mask or a batch) in order; every mask is resized
    (bilinear) to the size of the first one. Returns ``[L, H, W]`` in 0..1."""
    if not masks:
        raise ValueError("connect at least one mask (mask_1)")
    batches = [(name, _as_batch(mask, name)) for name, mask in masks]
    height, width = batches[0][1].shape[-2:]
    out = []
    for name, batch in batches:
        if batch.shape[-2:] != (height, width):
            batch = F.interpolate(batch[:, None], size=(height, width), mode="bilinear",
                                  align_corners=False)[:, 0]
        out.append(batch.to(batches[0][1].device))
    return torch.cat(out).clamp(0.0, 1.0)


class SCSAMaskBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        optional = [io.Mask.Input(f"mask_{i}", optional=True,
                                  tooltip=f"Region {i}: a mask, or a batch of masks that are appended in order.")
                    for i in range(2, MAX_MASKS + 1)]
        return io.Schema(
            node_id="SCSAMaskBatch", display_name="Mask Batch (SCSA)", category=CATEGORY,
            description="Stacks up to 8 masks into one MASK batch, in socket order (empty sockets are "
                        "skipped): the region list for SCSASemanticFromMasks. Use the same order for the "
                        "content and the style masks. Masks of another size are resized to mask_1's size.",
            inputs=[io.Mask.Input("mask_1", tooltip="Region 1 (its size is the batch's size)."), *optional],
            outputs=[io.Mask.Output("masks", display_name="masks",
                                    tooltip="All connected masks as one batch [regions, height, width].")],
        )

    @classmethod
    def execute(cls, mask_1, **more):
        masks = [("mask_1", mask_1)]
        for i in range(2, MAX_MASKS + 1):
            mask = more.get(f"mask_{i}")
            if mask is not None:
                masks.append((f"mask_{i}", mask))
        return io.NodeOutput(stack_masks(masks))


NODES = [SCSAMaskBatch]
