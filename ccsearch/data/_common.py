"""Helpers every loader shares: option checks, reproducible class/image subsets, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ccsearch.errors import UserError


def check_positive(name: str, value: int | None, *, optional: bool = True) -> None:
    """Reject non-integers (bools included) and values below 1 with one clear line."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")


def require_dir(root: Path | None, what: str) -> Path:
    """Return ``root`` as an existing, non-empty directory or say plainly what is wrong."""
    if root is None:
        raise UserError(f"{what} needs a data root folder; none was given")
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"{what} root does not exist: {root}")
    if not root.is_dir():
        raise UserError(f"{what} root is not a directory: {root}")
    if not any(root.iterdir()):
        raise UserError(f"{what} root is empty: {root}")
    return root


def choose_classes(num_classes: int, classes: int | None, seed: int, where: object) -> np.ndarray:
    """Pick ``classes`` of ``num_classes`` canonical class indices, sorted.

    The canonical order is fixed per source (sorted wnids, CIFAR label order), so the
    same seed picks the same classes wherever the data lives.
    """
    if classes is None:
        return np.arange(num_classes)
    if classes > num_classes:
        raise UserError(f"classes={classes} but {where} has only {num_classes} classes")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_classes, size=classes, replace=False))


def cap_per_class(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Indices into ``labels`` keeping at most ``cap`` per class (seeded), in original order."""
    if cap is None:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 1])  # a stream apart from the class choice
    order = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels)) if len(labels) else np.zeros(0, np.int64)
    kept = []
    for group in np.split(order, bounds[:-1]):
        if len(group) > cap:
            group = rng.choice(group, size=cap, replace=False)
        kept.append(group)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def relabel(
    labels: np.ndarray, chosen: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep samples of ``chosen`` classes; return (indices kept, labels renumbered 0..k-1)."""
    table = np.full(num_classes, -1, np.int64)
    table[chosen] = np.arange(len(chosen))
    new = table[labels]
    keep = np.flatnonzero(new >= 0)
    return keep, new[keep]


def restrict(
    x: np.ndarray,
    y: np.ndarray,
    chosen: np.ndarray,
    num_classes: int,
    cap: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Subset an in-memory split to ``chosen`` classes and ``cap`` images per class.

    Returns the arrays untouched (memory maps stay maps) when nothing is dropped.
    """
    if len(chosen) == num_classes and cap is None:
        return x, y
    keep, new_y = relabel(y, chosen, num_classes)
    sub = cap_per_class(new_y, cap, seed)
    idx = keep[sub]
    return x[idx], new_y[sub]


def resize_images(x: np.ndarray, resolution: int) -> np.ndarray:
    """Resize uint8 NHWC images to ``resolution`` square with PIL bilinear (antialiased)."""
    if x.shape[1] == resolution and x.shape[2] == resolution:
        return x
    out = np.empty((len(x), resolution, resolution, 3), np.uint8)
    for i, img in enumerate(x):
        pil = Image.fromarray(np.ascontiguousarray(img), "RGB")
        out[i] = np.asarray(pil.resize((resolution, resolution), Image.Resampling.BILINEAR))
    return out


def chw_rows_to_nhwc(rows: np.ndarray, where: object) -> np.ndarray:
    """Turn rows of R-plane, G-plane, B-plane bytes (CIFAR, Imagenet32) into NHWC."""
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise UserError(
            f"{where}: image data must be uint8 [N, 3*S*S], got {rows.dtype} {rows.shape}"
        )
    side = int(round((rows.shape[1] / 3) ** 0.5))
    if 3 * side * side != rows.shape[1] or side == 0:
        raise UserError(f"{where}: rows of {rows.shape[1]} bytes are not 3*S*S images")
    return np.ascontiguousarray(rows.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))


def size_note(native: int, resolution: int) -> str:
    if native == resolution:
        return f"{resolution}px"
    return f"{native}px resized to {resolution}px"


def subset_note(chosen: int, total: int, cap: int | None) -> str:
    text = f"{chosen} classes" if chosen == total else f"{chosen} of {total} classes"
    return text if cap is None else f"{text}, <= {cap} train images per class"
