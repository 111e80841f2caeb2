"""CIFAR-10 / CIFAR-100 in the "python version" pickle batches from the official tarballs.

Root is the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent.
Pickles can run code, so batches are read with an unpickler that only rebuilds numpy
arrays, lists, dicts, bytes and numbers.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ccsearch.data._common import (
    DataOptions,
    chw_rows_to_nhwc,
    require_dir,
    size_note,
    subset_proxy,
)
from ccsearch.data._proxy import ProxyData
from ccsearch.errors import UserError

try:  # numpy >= 2 moved the pickle helpers; old CIFAR pickles name numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _multiarray.scalar


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a batch dict with str keys (the files have bytes keys from Python 2)."""
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise UserError(f"not a CIFAR python pickle batch: {path} ({exc})") from exc
    if not isinstance(obj, dict):
        raise UserError(f"not a CIFAR python pickle batch (no dict inside): {path}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise UserError(f"CIFAR batch {path} has no '{key}' entry")
    return batch[key]


def _names(path: Path, key: str) -> list[str]:
    raw = _field(_unpickle(path), key, path)
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]


def _read_split(
    paths: list[Path], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in paths:
        batch = _unpickle(path)
        x = chw_rows_to_nhwc(np.asarray(_field(batch, "data", path)), path)
        y = np.asarray(_field(batch, label_key, path), dtype=np.int64).reshape(-1)
        if len(y) != len(x):
            raise UserError(f"CIFAR batch {path}: {len(x)} images but {len(y)} labels")
        if x.shape[1] != 32:
            raise UserError(f"CIFAR batch {path}: images are {x.shape[1]}px, expected 32px")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise UserError(f"CIFAR batch {path}: labels outside 0..{num_classes - 1}")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _find(root: Path | None, what: str, subdir: str, files: list[str]) -> Path:
    root = require_dir(root, what)
    for folder in (root, root / subdir):
        if all((folder / f).is_file() for f in files):
            return folder
    missing = next(f for f in files if not (root / f).is_file())
    raise UserError(f"not a {what} python-pickle folder (no {missing}, no {subdir}/): {root}")


def _load(
    name: str,
    folder: Path,
    train: list[str],
    test: list[str],
    meta: str,
    names_key: str,
    label_key: str,
    options: DataOptions,
) -> ProxyData:
    class_names = _names(folder / meta, names_key)
    k = len(class_names)
    label = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    return subset_proxy(
        _read_split([folder / f for f in train], label_key, k),
        _read_split([folder / f for f in test], label_key, k),
        class_names,
        options,
        source=name,
        where=folder,
        describe=lambda subset: f"{label} {size_note(32, options.resolution)}, {subset}",
    )


CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def load_cifar10(root: Path | None, options: DataOptions) -> ProxyData:
    """CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta)."""
    files = [*CIFAR10_TRAIN, "test_batch", "batches.meta"]
    folder = _find(root, "CIFAR-10", "cifar-10-batches-py", files)
    return _load(
        "cifar10", folder, CIFAR10_TRAIN, ["test_batch"], "batches.meta", "label_names", "labels",
        options,
    )  # fmt: skip


def load_cifar100(root: Path | None, options: DataOptions) -> ProxyData:
    """CIFAR-100 python batches (train, test, meta), fine labels."""
    folder = _find(root, "CIFAR-100", "cifar-100-python", ["train", "test", "meta"])
    return _load(
        "cifar100", folder, ["train"], ["test"], "meta", "fine_label_names", "fine_labels",
        options,
    )  # fmt: skip
