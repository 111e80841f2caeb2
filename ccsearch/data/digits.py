"""The embedded default: scikit-learn's bundled 8x8 handwritten digits, upsampled.

It ships inside scikit-learn (no download), so ``ccsearch run`` works on a bare machine.
It is a smoke test of the pipeline, nothing more: its accuracies say nothing about
ImageNet, and the description says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccsearch.data._common import DataOptions, subset_proxy
from ccsearch.data._proxy import ProxyData
from ccsearch.errors import UserError

VAL_FRACTION = 0.2


def load_digits_proxy(root: Path | None, options: DataOptions) -> ProxyData:
    """scikit-learn's bundled digits (no root): a smoke-test proxy, not ImageNet."""
    if root is not None:
        raise UserError(
            f"the digits source is bundled with scikit-learn and takes no root, got {root}"
        )
    bunch, train_idx, val_idx = split_digits(options.seed)
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    rgb = np.repeat(images[..., None], 3, axis=3)
    labels = bunch.target.astype(np.int64)
    return subset_proxy(
        (rgb[train_idx], labels[train_idx]),
        (rgb[val_idx], labels[val_idx]),
        digit_names(bunch),
        options,
        source="digits",
        where="digits",
        describe=lambda subset: (
            f"digits 8x8 upsampled to {options.resolution}px, {subset} — smoke-test proxy, "
            "not ImageNet"
        ),
    )


def digit_names(bunch) -> list[str]:
    """The digits' class names, "0".."9"."""
    return [str(int(name)) for name in bunch.target_names]


def split_digits(seed: int):
    """scikit-learn's digits and a stratified train/held-out split: (bunch, train, val)."""
    from sklearn.datasets import load_digits  # local: sklearn import is slow and only needed here
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=VAL_FRACTION, stratify=bunch.target,
        random_state=seed)
    return bunch, np.sort(train_idx), np.sort(val_idx)
