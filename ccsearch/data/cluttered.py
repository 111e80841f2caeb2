"""A harder embedded smoke set: scikit-learn's bundled digits, drawn into cluttered scenes.

Why: the plain digits sit at their ceiling (~95% top-1 for the plain backbone), so
CondConv's capacity cannot show, and with 360 held-out images two seeds ranked 8
candidates differently (Kendall tau 0.47).  Here every digit is drawn at a random size,
place and slant, in random colours, over a clutter stroke and pixel noise, several times:
the task needs more than the digits' shapes, and the held-out split holds each held-out
digit in ``VAL_RENDERS`` scenes (1,800 images), so evaluation noise is smaller.
Measured in the smoke proxy's 4 epochs: MnasNet-A1 56.7% / 45.8% with seeds 0 / 1.

The images depend only on ``DATA_SEED``, the resolution and the split of the digits,
never on a trial's seed: every trial, machine and run sees the same data, which its
checksum then shows.  It is a smoke test of the pipeline: its accuracies say nothing
about ImageNet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccsearch.data._common import DataOptions, subset_proxy
from ccsearch.data._proxy import ProxyData
from ccsearch.data.digits import digit_names, split_digits
from ccsearch.errors import UserError

TRAIN_RENDERS = 2  # scenes per training digit
VAL_RENDERS = 5  # scenes per held-out digit
DATA_SEED = 20260101  # the data set is one fixed artefact, whatever the trial's seed
CLUTTER_STROKES = 1
NOISE = 0.04  # std of the pixel noise, in 0..1 units
SIZE = (0.65, 0.95)  # the digit's size, as a fraction of the canvas


def load_cluttered_digits(root: Path | None, options: DataOptions) -> ProxyData:
    """Cluttered digits, generated (no root): a smoke-test proxy, not ImageNet."""
    if root is not None:
        raise UserError(f"the cluttered-digits source is generated and takes no root, got {root}")
    bunch, train_idx, val_idx = split_digits(0)
    digits = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(DATA_SEED)
    train_idx, val_idx = np.tile(train_idx, TRAIN_RENDERS), np.tile(val_idx, VAL_RENDERS)
    # Drawn at the resolution asked for (nothing to resize); train first, then val, from rng.
    train = draw_scenes(digits[train_idx], options.resolution, rng), labels[train_idx]
    val = draw_scenes(digits[val_idx], options.resolution, rng), labels[val_idx]
    return subset_proxy(
        train, val, digit_names(bunch), options, source="cluttered-digits",
        where="cluttered-digits",
        describe=lambda subset: (
            f"cluttered digits at {options.resolution}px ({subset}, {TRAIN_RENDERS}/"
            f"{VAL_RENDERS} scenes per train/val digit) — smoke-test proxy, not ImageNet"
        ),
    )  # fmt: skip


def draw_scenes(digits: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One scene per 8x8 digit (ink in 0..1): uint8 [N, size, size, 3]."""
    n = len(digits)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    v, u = np.meshgrid(grid, grid, indexing="ij")
    scale = rng.uniform(*SIZE, n).astype(np.float32)[:, None, None]
    cx, cy = rng.uniform(-1, 1, (2, n)).astype(np.float32)[..., None, None] * (1 - scale)
    shear = rng.uniform(-0.3, 0.3, n).astype(np.float32)[:, None, None]
    # canvas -> digit coordinates (0..8 across the digit), bilinear sampling of its ink
    x = ((u - cx) / scale + shear * (v - cy) / scale + 1) * 4 - 0.5
    y = ((v - cy) / scale + 1) * 4 - 0.5
    ink = _bilinear(digits, x, y)

    clutter = _colours(rng, n)
    # Ink brighter than the ground in every channel, by 0.4 to 0.6: a network learns a
    # random polarity too, but not in a few epochs.
    background = 0.4 * _colours(rng, n)
    foreground = background + rng.uniform(0.4, 0.6, (n, 3)).astype(np.float32)
    image = np.broadcast_to(background[:, None, None, :], (n, size, size, 3)).copy()
    for _ in range(CLUTTER_STROKES):
        stroke = _stroke(u, v, rng, n, width=1.5 / size)
        image += stroke[..., None] * (clutter[:, None, None, :] - image)
    image += ink[..., None] * (foreground[:, None, None, :] - image)
    image += rng.normal(0, NOISE, image.shape).astype(np.float32)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _bilinear(digits: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample each [8, 8] digit at (x, y) per pixel; 0 outside it."""
    n, h, w = digits.shape
    padded = np.pad(digits, ((0, 0), (1, 1), (1, 1)))  # zero ink around the digit
    x, y = np.clip(x + 1, 0, w + 1 - 1e-3), np.clip(y + 1, 0, h + 1 - 1e-3)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w + 1), np.minimum(y0 + 1, h + 1)
    b = np.arange(n)[:, None, None]
    return ((padded[b, y0, x0] * (1 - fx) + padded[b, y0, x1] * fx) * (1 - fy)
            + (padded[b, y1, x0] * (1 - fx) + padded[b, y1, x1] * fx) * fy)


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 1, (n, 3)).astype(np.float32)


def _stroke(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """One random straight stroke per image: its coverage in [0, 1]."""
    return stroke_coverage(u, v, tuple(rng.uniform(-1, 1, (4, n)).astype(np.float32)[..., None, None]),
                           width)


def stroke_coverage(u: np.ndarray, v: np.ndarray, ends: tuple[np.ndarray, ...], width: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the segments (x0, y0) -> (x1, y1), one per image,
    at pixel centres (u, v) in [-1, 1]."""
    x0, y0, x1, y1 = ends
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy + 1e-6), 0, 1)
    distance = np.hypot(u - (x0 + t * dx), v - (y0 + t * dy))
    return np.clip(1.5 - distance / width, 0, 1)
