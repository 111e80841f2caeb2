"""Downsampled ImageNet (Imagenet32 / Imagenet64, Chrabaszcz et al. 2017) in its ``.npz`` form.

Layout: ``ROOT/train_data_batch_<k>.npz`` and ``ROOT/val_data.npz``; each holds ``data``
(uint8 ``[N, 3*S*S]``, R plane then G then B) and ``labels`` (1-based). An optional
``ROOT/map_clsloc.txt`` (``<wnid> <label> <name>`` lines, from the ILSVRC devkit) names
the classes by wnid; otherwise they are called ``label_<k>``.

Batches are read one at a time and only the selected rows kept, so a class subset of
Imagenet64 never needs all 15 GB in memory.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ccsearch.data._common import (
    DataOptions,
    choose_classes,
    chw_rows_to_nhwc,
    relabel,
    require_dir,
    resize_images,
    select_rows,
    size_note,
    subset_note,
)
from ccsearch.data._proxy import ProxyData
from ccsearch.errors import UserError

_BATCH = re.compile(r"train_data_batch_(\d+)\.npz")


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read downsampled-ImageNet batch {path}: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile) or not {"data", "labels"} <= set(npz.files):
        raise UserError(f"{path}: expected an .npz with 'data' and 'labels' arrays")
    return npz


def _read(path: Path, key: str) -> np.ndarray:
    with _open_npz(path) as npz:
        try:
            return np.asarray(npz[key])
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UserError(f"cannot read '{key}' from {path}: {exc}") from exc


def _labels(path: Path) -> np.ndarray:
    raw = _read(path, "labels").reshape(-1)
    if raw.dtype.kind not in "iu" or (raw.size and int(raw.min()) < 1):
        raise UserError(f"{path}: labels must be 1-based integers (1..1000)")
    return raw.astype(np.int64) - 1


def _class_names(root: Path, labels: np.ndarray) -> list[str]:
    wnids: dict[int, str] = {}
    mapping = root / "map_clsloc.txt"
    if mapping.is_file():
        try:
            text = mapping.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read class map {mapping}: {exc}") from exc
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                wnids[int(parts[1]) - 1] = parts[0]
    return [wnids.get(int(k), f"label_{int(k) + 1}") for k in labels]


def load_downsampled(root: Path | None, options: DataOptions) -> ProxyData:
    """Imagenet32/64 ``.npz`` batches (train_data_batch_*.npz, val_data.npz)."""
    resolution = options.resolution
    root = require_dir(root, "imagenet-downsampled")
    batches = sorted(
        (p for p in root.iterdir() if _BATCH.fullmatch(p.name)),
        key=lambda p: int(_BATCH.fullmatch(p.name).group(1)),  # type: ignore[union-attr]
    )
    val = root / "val_data.npz"
    if not batches or not val.is_file():
        raise UserError(
            f"not an Imagenet32/64 folder (expected train_data_batch_*.npz and val_data.npz): {root}"
        )
    files = [*batches, val]
    labels = [_labels(p) for p in files]
    present = np.unique(np.concatenate(labels[:-1]))  # canonical classes: those with train data
    chosen = choose_classes(len(present), options.classes, options.seed, root)
    table = np.full(int(max(int(lab.max(initial=0)) for lab in labels)) + 1, -1, np.int64)
    table[present] = np.arange(len(present))

    # Global selection over all train batches, then per-batch row picks.
    train_canon = table[np.concatenate(labels[:-1])]
    train_rows, train_y = select_rows(
        train_canon, chosen, len(present), options.images_per_class, options.seed
    )
    val_canon = table[labels[-1]]
    val_in = np.flatnonzero(val_canon >= 0)
    val_keep, val_y = relabel(val_canon[val_in], chosen, len(present))
    val_rows = val_in[val_keep]

    offsets = np.cumsum([0] + [len(lab) for lab in labels])
    train_x = np.empty((len(train_rows), resolution, resolution, 3), np.uint8)
    val_x = np.empty((len(val_rows), resolution, resolution, 3), np.uint8)
    filled = 0
    native: int | None = None
    for i, path in enumerate(files):
        data = _read(path, "data")
        if data.ndim != 2 or len(data) != len(labels[i]):
            raise UserError(f"{path}: 'data' has shape {data.shape} for {len(labels[i])} labels")
        if path == val:
            local, dst = val_rows, val_x
        else:
            in_batch = (train_rows >= offsets[i]) & (train_rows < offsets[i + 1])
            local = train_rows[in_batch] - offsets[i]
            dst, filled = train_x[filled : filled + len(local)], filled + len(local)
        images = chw_rows_to_nhwc(data[local], path)
        side = int(round((data.shape[1] / 3) ** 0.5))
        if native is not None and side != native:
            raise UserError(f"{path}: {side}px images, other batches are {native}px")
        native = side
        dst[:] = resize_images(images, resolution)

    names = _class_names(root, present[chosen])
    desc = (
        f"downsampled ImageNet {size_note(native or resolution, resolution)}, "
        f"{subset_note(len(chosen), len(present), options.images_per_class)}"
    )
    return ProxyData(
        train_x,
        train_y,
        val_x,
        val_y,
        class_names=names,
        source="imagenet-downsampled",
        description=desc,
    )
