"""Batch augmentation on the training device: no per-image Python, no decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, for a whole batch.

    ``images`` is ``[B, C, H, W]`` (any dtype); offsets are drawn per example.
    """
    b, _, h, w = images.shape
    device = images.device
    if padding:
        padded = F.pad(images, (padding, padding, padding, padding))  # [B, C, H+2p, W+2p]
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device="cpu").to(device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device="cpu").to(device)
        rows = dy[:, None] + torch.arange(h, device=device)  # [B, H]
        cols = dx[:, None] + torch.arange(w, device=device)  # [B, W]
        batch = torch.arange(b, device=device)[:, None, None]
        # Gather [B, H, W, C] from channels-last view, then back to [B, C, H, W].
        images = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        images = images.permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator, device="cpu").to(device) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images
