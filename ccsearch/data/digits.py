"""The embedded default: scikit-learn's bundled 8x8 handwritten digits, upsampled.

It ships inside scikit-learn (no download), so ``ccsearch run`` works on a bare machine.
It is a smoke test of the pipeline, nothing more: its accuracies say nothing about
ImageNet, and the description says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccsearch.data._common import choose_classes, resize_images, restrict, subset_note
from ccsearch.data._proxy import ProxyData
from ccsearch.errors import UserError

VAL_FRACTION = 0.2


def load_digits_proxy(
    root: Path | None,
    *,
    resolution: int,
    classes: int | None,
    images_per_class: int | None,
    seed: int,
) -> ProxyData:
    """scikit-learn's bundled digits (no root): a smoke-test proxy, not ImageNet."""
    if root is not None:
        raise UserError(
            f"the digits source is bundled with scikit-learn and takes no root, got {root}"
        )
    bunch, train_idx, val_idx = split_digits(seed)
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    rgb = np.repeat(images[..., None], 3, axis=3)
    labels = bunch.target.astype(np.int64)
    k = len(bunch.target_names)
    chosen = choose_classes(k, classes, seed, "digits")
    train_x, train_y = restrict(
        rgb[train_idx], labels[train_idx], chosen, k, images_per_class, seed
    )
    val_x, val_y = restrict(rgb[val_idx], labels[val_idx], chosen, k, None, seed)
    desc = (
        f"digits 8x8 upsampled to {resolution}px, "
        f"{subset_note(len(chosen), k, images_per_class)} — smoke-test proxy, not ImageNet"
    )
    return ProxyData(
        resize_images(train_x, resolution),
        train_y,
        resize_images(val_x, resolution),
        val_y,
        class_names=[str(int(bunch.target_names[c])) for c in chosen],
        source="digits",
        description=desc,
    )


def split_digits(seed: int):
    """scikit-learn's digits and a stratified train/held-out split: (bunch, train, val)."""
    from sklearn.datasets import load_digits  # local: sklearn import is slow and only needed here
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=VAL_FRACTION, stratify=bunch.target,
        random_state=seed)
    return bunch, np.sort(train_idx), np.sort(val_idx)
