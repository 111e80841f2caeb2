"""What every loader shares: its options (checked once), reproducible class and image
subsets, resizing, and the ending that turns in-memory splits into a ``ProxyData``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ccsearch.data._proxy import ProxyData
from ccsearch.errors import UserError
from ccsearch.validate import nonnegative_int, positive_int


@dataclass(frozen=True)
class DataOptions:
    """What a loader is asked for: image size, class subset, per-class cap, and the seed
    that picks the subset.  Checked here, once, whichever loader receives them."""

    resolution: int
    classes: int | None = None  # None: every class of the source
    images_per_class: int | None = None  # cap on training images per class; None: no cap
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("resolution", self.resolution)
        positive_int("classes", self.classes, optional=True)
        positive_int("images_per_class", self.images_per_class, optional=True)
        nonnegative_int("seed", self.seed)


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


def select_rows(
    labels: np.ndarray, chosen: np.ndarray, num_classes: int, cap: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``chosen`` classes, at most ``cap`` per class (seeded), in their order:
    (row indices, labels renumbered 0..k-1)."""
    keep, new = relabel(labels, chosen, num_classes)
    sub = cap_per_class(new, cap, seed)
    return keep[sub], new[sub]


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
    rows, new_y = select_rows(y, chosen, num_classes, cap, seed)
    return x[rows], new_y


def subset_proxy(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    options: DataOptions,
    *,
    source: str,
    where: object,
    describe: Callable[[str], str],
) -> ProxyData:
    """The ending of every loader that holds a whole split in memory: choose the classes,
    cap the training images, resize both splits, and say what was kept.

    ``describe`` gets the subset note (``"4 of 10 classes, <= 7 train images per class"``)
    and returns the data's description.
    """
    k = len(class_names)
    chosen = choose_classes(k, options.classes, options.seed, where)
    train_x, train_y = restrict(*train, chosen, k, options.images_per_class, options.seed)
    val_x, val_y = restrict(*val, chosen, k, None, options.seed)
    return ProxyData(
        resize_images(train_x, options.resolution),
        train_y,
        resize_images(val_x, options.resolution),
        val_y,
        class_names=[class_names[c] for c in chosen],
        source=source,
        description=describe(subset_note(len(chosen), k, options.images_per_class)),
    )


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
