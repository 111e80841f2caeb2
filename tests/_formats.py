"""Writers of small data files in each real on-disk format, shared by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ccsearch.data import ProxyData

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def colour_of(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, 3).astype(float).mean(axis=0)


def save_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 32)) -> None:
    """A class-coloured image whose black side bars must vanish under the centre crop."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    margin = abs(w - h) // 4  # bars are well outside the centre square
    if w >= h:
        pixels[:, margin : w - margin] = colour
    else:
        pixels[margin : h - margin, :] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=95, subsampling=0)


def make_imagenet(
    root: Path,
    *,
    n_classes: int = 3,
    train_per_class: int = 4,
    val_per_class: int = 2,
    flat_val: str | None = None,
    corrupt: bool = True,
) -> Path:
    """ImageNet layout; ``flat_val`` = None (wnid folders), "txt" or "csv" (labels file)."""
    for c, wnid in enumerate(WNIDS[:n_classes]):
        for i in range(train_per_class):
            save_jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", COLOURS[c])
    labels = []
    for c, wnid in enumerate(WNIDS[:n_classes]):
        for i in range(val_per_class):
            name = f"ILSVRC2012_val_{c:04d}{i:04d}"
            labels.append((name, wnid))
            folder = root / "val" if flat_val else root / "val" / wnid
            save_jpeg(folder / f"{name}.JPEG", COLOURS[c], size=(32, 48))
    if flat_val == "txt":
        lines = ["# filename wnid"] + [f"{n}.JPEG {w}" for n, w in labels]
        (root / "val_labels.txt").write_text("\n".join(lines) + "\n")
    elif flat_val == "csv":
        rows = ["ImageId,PredictionString"] + [
            f"{n},{w} 1 2 30 40 {w} 3 4 20 20" for n, w in labels
        ]
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    if corrupt:
        (root / "train" / WNIDS[0] / "broken.JPEG").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def assert_colours_match(data: ProxyData) -> None:
    for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
        for image, label in zip(x, y, strict=True):
            expected = COLOURS[WNIDS.index(data.class_names[label])]
            np.testing.assert_allclose(colour_of(image), expected, atol=4)


def write_pickle(path: Path, obj: object) -> None:
    """Protocol 2 naming ``numpy.core`` for arrays, as the real (Python 2) CIFAR files do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = pickle.dumps(obj, protocol=2)
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def cifar_rows(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """CHW-flattened rows: R plane = label, G plane = image id, B plane = 255."""
    n = len(labels)
    planes = np.empty((n, 3, 32, 32), np.uint8)
    planes[:, 0] = labels[:, None, None]
    planes[:, 1] = ids[:, None, None]
    planes[:, 2] = 255
    return planes.reshape(n, 3072)


def make_cifar10(folder: Path, per_class_per_batch: int = 1) -> Path:
    labels = np.repeat(np.arange(10), per_class_per_batch)
    for b in range(1, 6):
        ids = np.arange(len(labels)) + 20 * b
        batch = {b"batch_label": b"x", b"data": cifar_rows(labels, ids), b"labels": labels.tolist()}
        write_pickle(folder / f"data_batch_{b}", batch)
    test = {
        b"data": cifar_rows(labels, np.zeros(len(labels), np.int64)),
        b"labels": labels.tolist(),
    }
    write_pickle(folder / "test_batch", test)
    names = [f"name{c}".encode() for c in range(10)]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return folder


def make_cifar100(folder: Path) -> Path:
    labels = np.repeat(np.arange(100), 2)
    for split in ("train", "test"):
        rows = cifar_rows(labels, np.arange(len(labels)) % 256)
        batch = {
            b"data": rows,
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
        }
        write_pickle(folder / split, batch)
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{c}".encode() for c in range(100)]})
    return folder


def downsampled_batch(labels_1based: np.ndarray, side: int) -> dict[str, np.ndarray]:
    """Imagenet32-style rows: R plane = 10*label, G plane = 100, B plane = 250."""
    n = len(labels_1based)
    planes = np.empty((n, 3, side, side), np.uint8)
    planes[:, 0] = (10 * labels_1based)[:, None, None]
    planes[:, 1] = 100
    planes[:, 2] = 250
    return {
        "data": planes.reshape(n, -1),
        "labels": labels_1based,
        "mean": np.zeros(3 * side * side),
    }



def make_downsampled(root: Path, side: int = 8) -> Path:
    root.mkdir(parents=True)
    np.savez(
        root / "train_data_batch_1.npz", **downsampled_batch(np.array([1, 2, 3, 4, 1, 2]), side)
    )
    np.savez(
        root / "train_data_batch_2.npz", **downsampled_batch(np.array([3, 4, 1, 2, 3, 4]), side)
    )
    np.savez(root / "val_data.npz", **downsampled_batch(np.array([4, 3, 2, 1]), side))
    return root
