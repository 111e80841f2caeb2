"""Batch augmentation on the training device: no per-image Python, no decoding.

The random draws of a whole epoch (crop offsets, flips) are made at once, like its
shuffle order, and reach the device in one copy: a copy per step from pageable memory
would wait for the GPU's stream every step, and the CPU could never queue ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Draws:
    """Per-example crop offsets and flips (on the training device), in batch order."""

    dy: torch.Tensor | None  # [N] rows to skip in the padded image; None: no crop
    dx: torch.Tensor | None
    flips: torch.Tensor | None  # [N] bool; None: no flip

    @classmethod
    def draw(cls, n: int, padding: int, flip: bool, generator: torch.Generator | None,
             device: torch.device | str = "cpu") -> Draws:
        """``n`` examples' draws from ``generator`` (a CPU one: the same on every device)."""
        def on_device(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        dy = dx = flips = None
        if padding:
            dy = on_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator))
            dx = on_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator))
        if flip:
            flips = on_device(torch.rand(n, generator=generator) < 0.5)
        return cls(dy, dx, flips)

    def __getitem__(self, part: slice) -> Draws:
        def cut(t):
            return None if t is None else t[part]

        return Draws(cut(self.dy), cut(self.dx), cut(self.flips))


def crop_flip(images: torch.Tensor, padding: int, draws: Draws) -> torch.Tensor:
    """Crop after zero padding and flip horizontally, each example as ``draws`` says.

    ``images`` is ``[B, C, H, W]`` (any dtype, any layout); the result is channels-last
    in memory.  Only device ops: nothing here waits for the device.
    """
    b, _, h, w = images.shape
    device = images.device
    if padding and draws.dy is not None:
        padded = F.pad(images, (padding, padding, padding, padding))  # [B, C, H+2p, W+2p]
        rows = draws.dy[:, None] + torch.arange(h, device=device)  # [B, H]
        cols = draws.dx[:, None] + torch.arange(w, device=device)  # [B, W]
        batch = torch.arange(b, device=device)[:, None, None]
        # Gather [B, H, W, C] from channels-last view, then back to [B, C, H, W].
        images = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        images = images.permute(0, 3, 1, 2)
    if draws.flips is not None:
        images = torch.where(draws.flips[:, None, None, None], images.flip(3), images)
    return images


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip of one batch, drawn now
    (the trainer draws a whole epoch at once: ``Draws.draw``)."""
    draws = Draws.draw(len(images), padding, flip, generator, images.device)
    return crop_flip(images, padding, draws)
