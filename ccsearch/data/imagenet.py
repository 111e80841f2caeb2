"""ImageNet in its usual folder layout: find the files, pick the class subset, decode.

Layout (``.JPEG``, ``.jpg`` or ``.png``): ``ROOT/train/<wnid>/*.JPEG`` and either ``ROOT/val/<wnid>/*.JPEG`` or a flat
``ROOT/val/*.JPEG`` with a labels file in ROOT:

- ``val_labels.txt``: one ``<filename> <wnid>`` per line (``#`` comments allowed), or
- ``LOC_val_solution.csv`` (Kaggle): ``ImageId,PredictionString``, the wnid being the
  first token of PredictionString.

File names are matched without their extension. Decoding JPEGs is slow; for repeated
runs build a cache once with :func:`ccsearch.data.cache.prepare_imagenet_cache`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccsearch.data._common import (
    DataOptions,
    cap_per_class,
    choose_classes,
    relabel,
    require_dir,
    subset_note,
)
from ccsearch.data._jpeg import decode_into
from ccsearch.data._proxy import ProxyData
from ccsearch.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
LABEL_FILES = ("val_labels.txt", "LOC_val_solution.csv")


@dataclass
class ImageNetSelection:
    """Which files to decode, with labels already renumbered to the chosen classes."""

    root: Path
    class_names: list[str]
    total_classes: int
    train_paths: list[Path]
    train_y: np.ndarray
    val_paths: list[Path]
    val_y: np.ndarray


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)


def _read_val_labels(root: Path) -> dict[str, str]:
    """Map val file stem -> wnid from whichever supported labels file is present."""
    for name in LABEL_FILES:
        path = root / name
        if path.is_file():
            break
    else:
        raise UserError(
            f"flat val folder {root / 'val'} needs a labels file: {root / LABEL_FILES[0]} "
            f"('<filename> <wnid>' lines) or {root / LABEL_FILES[1]}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read val labels file {path}: {exc}") from exc
    labels: dict[str, str] = {}
    if path.suffix == ".csv":
        rows = csv.reader(text.splitlines())
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise UserError(f"{path}: expected header 'ImageId,PredictionString', got {header}")
        for lineno, row in enumerate(rows, start=2):
            if len(row) < 2 or not row[1].split():
                raise UserError(f"{path}:{lineno}: expected 'ImageId,PredictionString', got {row}")
            labels[Path(row[0].strip()).stem] = row[1].split()[0]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise UserError(f"{path}:{lineno}: expected '<filename> <wnid>', got {line!r}")
            labels[Path(parts[0]).stem] = parts[1]
    if not labels:
        raise UserError(f"val labels file has no entries: {path}")
    return labels


def _scan_val(root: Path, wnid_index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Val files and canonical class indices; classes not in train are ignored."""
    val = root / "val"
    if not val.is_dir():
        raise UserError(f"ImageNet root has no val folder: {val}")
    paths: list[Path] = []
    labels: list[int] = []
    dirs = _class_dirs(val)
    if dirs:
        for d in dirs:
            if d.name in wnid_index:
                files = _images_in(d)
                paths += files
                labels += [wnid_index[d.name]] * len(files)
        return paths, labels
    files = _images_in(val)
    if not files:
        raise UserError(f"ImageNet val folder has no images: {val}")
    names = _read_val_labels(root)
    for f in files:
        wnid = names.get(f.stem)
        if wnid is None:
            raise UserError(f"val image {f} has no entry in the labels file in {root}")
        if wnid in wnid_index:
            paths.append(f)
            labels.append(wnid_index[wnid])
    return paths, labels


def select_imagenet(root: Path | None, options: DataOptions) -> ImageNetSelection:
    """Scan the folder tree and choose classes (sorted wnids, seeded) and train images."""
    root = require_dir(root, "imagenet")
    train = root / "train"
    if not train.is_dir():
        raise UserError(f"not an ImageNet folder (expected {train}/<wnid>/*.JPEG): {root}")
    dirs = _class_dirs(train)
    if not dirs:
        raise UserError(f"ImageNet train folder has no class folders: {train}")
    wnids = [d.name for d in dirs]
    chosen = choose_classes(len(wnids), options.classes, options.seed, train)

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for new_label, c in enumerate(chosen):
        files = _images_in(dirs[c])
        if not files:
            raise UserError(f"ImageNet class folder has no images: {dirs[c]}")
        train_paths += files
        train_labels += [new_label] * len(files)
    train_y = np.asarray(train_labels, np.int64)
    capped = cap_per_class(train_y, options.images_per_class, options.seed)

    val_paths, val_labels = _scan_val(root, {w: i for i, w in enumerate(wnids)})
    val_keep, val_y = relabel(np.asarray(val_labels, np.int64), chosen, len(wnids))
    return ImageNetSelection(
        root=root,
        class_names=[wnids[c] for c in chosen],
        total_classes=len(wnids),
        train_paths=[train_paths[i] for i in capped],
        train_y=train_y[capped],
        val_paths=[val_paths[i] for i in val_keep],
        val_y=val_y,
    )


def check_readable(split: str, paths: list[Path], ok: np.ndarray, root: Path) -> None:
    """Refuse a split with no image that decoded: nothing to train or measure on."""
    if not ok.any():
        how = f"all {len(paths)} failed to decode (e.g. {paths[0]})" if paths else "none found"
        raise UserError(f"no readable {split} images in {root}: {how}")


def load_imagenet(root: Path | None, options: DataOptions) -> ProxyData:
    """ImageNet JPEG folders, decoded now (slow for many images: prepare a cache instead)."""
    resolution = options.resolution
    sel = select_imagenet(root, options)
    splits = []
    skipped = 0
    for paths, y, desc in (
        (sel.train_paths, sel.train_y, "train"),
        (sel.val_paths, sel.val_y, "val"),
    ):
        x = np.zeros((len(paths), resolution, resolution, 3), np.uint8)
        ok = decode_into(paths, x, resolution, desc=desc)
        check_readable(desc, paths, ok, sel.root)
        skipped += int((~ok).sum())
        splits += [x[ok] if not ok.all() else x, y[ok]]
    note = f", {skipped} unreadable images skipped" if skipped else ""
    desc = (
        f"ImageNet JPEGs from {sel.root} at {resolution}px, "
        f"{subset_note(len(sel.class_names), sel.total_classes, options.images_per_class)}{note}"
    )
    return ProxyData(*splits, class_names=sel.class_names, source="imagenet", description=desc)
