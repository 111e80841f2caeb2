"""An embedded smoke set that can rank candidates: random stroke glyphs, generated as code.

Why: the bundled digits saturate (~92% top-1 for the plain backbone, 8 candidates within
two noise floors), and on a few-epoch proxy the cluttered digits rank candidates by when
their training takes off, not by what they can learn.  Here each class is a fixed glyph
of ``STROKES`` random strokes; every image is a fresh render of it (end points jittered,
random scale, rotation, place and colours, pixel noise), so the training set can be as
large as the time limit allows without repeating an image, and ``VAL_PER_CLASS`` held-out
renders per class keep evaluation noise near a point.

The images depend only on ``DATA_SEED`` and the resolution, never on a trial's seed:
every trial, machine and run sees the same data, which its checksum then shows.  It is a
smoke test of the pipeline: its accuracies say nothing about ImageNet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccsearch.data._common import DataOptions, subset_proxy
from ccsearch.data._proxy import ProxyData
from ccsearch.data.cluttered import stroke_coverage
from ccsearch.errors import UserError

CLASSES = 20
STROKES = 3  # strokes per glyph
TRAIN_PER_CLASS = 300
VAL_PER_CLASS = 200
JITTER = 0.12  # std of each end point's jitter, in canvas half-widths
NOISE = 0.05  # std of the pixel noise, in 0..1 units
STROKE_WIDTH = 1.5  # in pixels
DATA_SEED = 20261203  # the data set is one fixed artefact, whatever the trial's seed


def load_glyphs(root: Path | None, options: DataOptions) -> ProxyData:
    """Random stroke glyphs, generated (no root): a smoke-test proxy, not ImageNet."""
    if root is not None:
        raise UserError(f"the glyphs source is generated and takes no root, got {root}")
    rng = np.random.default_rng(DATA_SEED)
    templates = rng.uniform(-0.8, 0.8, (CLASSES, STROKES, 4)).astype(np.float32)
    # Train first, then val, from the same stream: one fixed artefact per resolution.
    splits = [render_split(templates, n, options.resolution, rng)
              for n in (TRAIN_PER_CLASS, VAL_PER_CLASS)]
    return subset_proxy(
        splits[0], splits[1], [f"glyph{k:02d}" for k in range(CLASSES)], options,
        source="glyphs", where="glyphs",
        describe=lambda subset: (
            f"random stroke glyphs at {options.resolution}px ({subset}, {TRAIN_PER_CLASS}/"
            f"{VAL_PER_CLASS} renders per class) — smoke-test proxy, not ImageNet"
        ),
    )  # fmt: skip


def render_split(
    templates: np.ndarray, per_class: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` renders of every glyph: uint8 [N, size, size, 3] and int64 labels."""
    labels = np.repeat(np.arange(len(templates), dtype=np.int64), per_class)
    n = len(labels)
    ends = templates[labels] + rng.normal(0, JITTER, (n, STROKES, 4)).astype(np.float32)
    ends = ends.reshape(n, STROKES * 2, 2)
    angle = rng.uniform(-0.35, 0.35, n)
    scale = rng.uniform(0.75, 1.05, n)
    rotation = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], -1)
    rotation = (rotation * scale[:, None]).reshape(n, 2, 2).astype(np.float32)
    shift = rng.uniform(-0.15, 0.15, (n, 1, 2)).astype(np.float32)
    ends = (ends @ rotation.transpose(0, 2, 1) + shift).reshape(n, STROKES, 4)

    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    v, u = np.meshgrid(grid, grid, indexing="ij")
    ink = np.zeros((n, size, size), np.float32)
    for s in range(STROKES):
        x0, y0, x1, y1 = (ends[:, s, k, None, None] for k in range(4))
        ink = np.maximum(ink, stroke_coverage(u, v, (x0, y0, x1, y1), width=STROKE_WIDTH / size))
    # Ink brighter than the ground in every channel by 0.4 to 0.6 (as in the cluttered
    # digits): a network learns a random polarity too, but not in a few epochs.
    background = 0.4 * rng.uniform(0, 1, (n, 3)).astype(np.float32)
    foreground = background + rng.uniform(0.4, 0.6, (n, 3)).astype(np.float32)
    image = background[:, None, None, :] + ink[..., None] * (foreground - background)[:, None, None, :]
    image += rng.normal(0, NOISE, image.shape).astype(np.float32)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8), labels
