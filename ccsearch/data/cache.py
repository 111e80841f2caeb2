"""A decoded ImageNet subset on disk, so every trial reads memory instead of JPEGs.

``prepare_imagenet_cache`` decodes once, in parallel, into ``train_x.npy``, ``train_y.npy``,
``val_x.npy``, ``val_y.npy`` (uint8 NHWC / int64) and ``manifest.json``. The cache is built
in a temporary folder beside ``out_dir`` and renamed into place at the end, so a
half-written cache never exists under the final name. Loading memory-maps the arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from ccsearch.data._common import DataOptions, size_note, subset_proxy
from ccsearch.data._jpeg import decode_into
from ccsearch.data._proxy import ProxyData
from ccsearch.data.imagenet import check_readable, select_imagenet
from ccsearch.errors import UserError
from ccsearch.validate import positive_int

FORMAT = "ccsearch-imagenet-cache"
VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("train_x", "train_y", "val_x", "val_y")
CACHE_FILES = frozenset({MANIFEST, *(f"{a}.npy" for a in ARRAYS)})
MAX_SKIPPED_LISTED = 100
_COPY_ROWS = 4096


def is_cache_dir(path: str | Path) -> bool:
    """A folder with a ``manifest.json`` is treated as a cache (and then must be a valid one)."""
    return (Path(path).expanduser() / MANIFEST).is_file()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_out_dir(out_dir: Path) -> None:
    """Allow a missing or empty folder or an earlier cache; refuse to clobber anything else."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"cache output path exists and is not a directory: {out_dir}")
    names = {p.name for p in out_dir.iterdir()}
    if names and not (MANIFEST in names and names <= CACHE_FILES):
        raise UserError(f"refusing to overwrite a non-empty folder that is not a cache: {out_dir}")


def _write_split(
    tmp: Path,
    root: Path,
    split: str,
    paths: list[Path],
    y: np.ndarray,
    resolution: int,
    workers: int | None,
    progress: bool,
) -> list[Path]:
    """Decode one split into ``tmp``; return the paths that could not be decoded."""
    full = tmp / f"{split}_x.partial.npy"
    x = open_memmap(full, mode="w+", dtype=np.uint8, shape=(len(paths), resolution, resolution, 3))
    ok = decode_into(paths, x, resolution, workers=workers, progress=progress, desc=split)
    check_readable(split, paths, ok, root)
    x.flush()
    final = tmp / f"{split}_x.npy"
    if ok.all():
        del x
        full.rename(final)
    else:  # drop skipped rows: the header holds the shape, so copy into a right-sized file
        keep = np.flatnonzero(ok)
        dst = open_memmap(final, mode="w+", dtype=np.uint8, shape=(len(keep), *x.shape[1:]))
        for s in range(0, len(keep), _COPY_ROWS):
            dst[s : s + _COPY_ROWS] = x[keep[s : s + _COPY_ROWS]]
        dst.flush()
        del x, dst
        full.unlink()
    np.save(tmp / f"{split}_y.npy", np.ascontiguousarray(y[ok], dtype=np.int64))
    return [paths[i] for i in np.flatnonzero(~ok)]


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def prepare_imagenet_cache(
    root: str | Path,
    out_dir: str | Path,
    *,
    classes: int | None = None,
    images_per_class: int | None = None,
    resolution: int = 64,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Decode an ImageNet folder tree once into a memory-mappable cache at ``out_dir``.

    Unreadable images are skipped and listed in the manifest. Returns ``out_dir``.
    """
    options = DataOptions(
        resolution=resolution, classes=classes, images_per_class=images_per_class, seed=seed
    )
    positive_int("workers", workers, optional=True)
    root = Path(root).expanduser()
    out_dir = Path(out_dir).expanduser()
    if is_cache_dir(root):
        raise UserError(f"{root} is already a prepared cache; point at the JPEG folder tree")
    _check_out_dir(out_dir)
    sel = select_imagenet(root, options)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        skipped = _write_split(
            tmp, root, "train", sel.train_paths, sel.train_y, resolution, workers, progress
        )
        skipped += _write_split(
            tmp, root, "val", sel.val_paths, sel.val_y, resolution, workers, progress
        )
        files = {}
        for name in ARRAYS:
            path = tmp / f"{name}.npy"
            arr = np.load(path, mmap_mode="r")
            files[path.name] = {
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "sha256": sha256_file(path),
            }
            del arr
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "source_root": str(root.resolve()),
            "resolution": resolution,
            "class_names": sel.class_names,
            "total_classes": sel.total_classes,
            "classes": classes,
            "images_per_class": images_per_class,
            "seed": seed,
            "counts": {
                "train": files["train_y.npy"]["shape"][0],
                "val": files["val_y.npy"]["shape"][0],
            },
            "skipped": {
                "count": len(skipped),
                "paths": [str(p) for p in skipped[:MAX_SKIPPED_LISTED]],
            },
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the cache from other users
        _check_out_dir(out_dir)  # it may have changed while we decoded
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """Parse and sanity-check ``manifest.json``; any problem is a corrupted cache."""
    path = cache_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"corrupted cache manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"corrupted cache manifest {path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise UserError(
            f"cache {cache_dir} has format version {manifest.get('version')!r}, "
            f"this ccsearch reads version {VERSION}; prepare it again"
        )
    try:
        ok = (
            isinstance(manifest["resolution"], int)
            and all(isinstance(n, str) for n in manifest["class_names"])
            and all(isinstance(manifest["files"][f"{a}.npy"]["shape"], list) for a in ARRAYS)
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"corrupted cache manifest {path}: missing {exc}") from exc
    if not ok:
        raise UserError(f"corrupted cache manifest {path}: bad field types")
    return manifest


def load_cache(cache_dir: str | Path, *, verify: bool = False) -> ProxyData:
    """Memory-map a prepared cache; ``verify`` also re-hashes every file (slow when large)."""
    cache_dir = Path(cache_dir).expanduser()
    if not cache_dir.is_dir():
        raise UserError(f"cache folder does not exist: {cache_dir}")
    manifest = read_manifest(cache_dir)
    arrays = {}
    for name in ARRAYS:
        path = cache_dir / f"{name}.npy"
        spec = manifest["files"][path.name]
        if not path.is_file():
            raise UserError(f"cache file missing: {path}")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"cache file is truncated or corrupted: {path} ({exc})") from exc
        if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec.get("dtype"):
            raise UserError(
                f"cache file {path} holds {arr.dtype} {list(arr.shape)}, "
                f"manifest says {spec.get('dtype')} {spec['shape']}"
            )
        if verify and sha256_file(path) != spec.get("sha256"):
            raise UserError(f"cache file checksum mismatch: {path}")
        arrays[name] = arr
    names = manifest["class_names"]
    for split in ("train", "val"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if (
            x.ndim != 4
            or x.shape[1:] != (manifest["resolution"],) * 2 + (3,)
            or y.shape != x.shape[:1]
        ):
            raise UserError(f"cache {cache_dir}: {split} arrays have inconsistent shapes")
        if not len(y):  # older prepare-data versions wrote such caches from unreadable JPEGs
            raise UserError(f"cache {cache_dir} holds no {split} images: prepare it again "
                            "(ccsearch prepare-data imagenet --root ... --force)")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= len(names)):
            raise UserError(
                f"cache {cache_dir}: {split}_y.npy has labels outside 0..{len(names) - 1}"
            )
    desc = (
        f"ImageNet cache {cache_dir} at {manifest['resolution']}px, {len(names)} classes "
        f"(from {manifest.get('source_root')})"
    )
    return ProxyData(
        arrays["train_x"],
        arrays["train_y"],
        arrays["val_x"],
        arrays["val_y"],
        class_names=list(names),
        source="imagenet",
        description=desc,
    )


def load_imagenet_cache(root: Path, options: DataOptions) -> ProxyData:
    """A cache as a proxy: class subset and cap as for JPEGs; only downscaling is allowed.

    Every file is checked against its SHA-256 first (once per process: a run, each worker,
    the Ray driver), so a changed file stops a search before any training; it costs one
    read of the cache, ~1.4 GB/s of hashing (ImageNet-100 at 64 px: about 1 s)."""
    data = load_cache(root, verify=True)
    if options.resolution > data.resolution:
        raise UserError(
            f"cache {root} holds {data.resolution}px images; cannot serve {options.resolution}px "
            f"(prepare a cache at >= {options.resolution}px)"
        )
    size = size_note(data.resolution, options.resolution)
    return subset_proxy(
        (data.train_x, data.train_y),
        (data.val_x, data.val_y),
        data.class_names,
        options,
        source="imagenet",
        where=root,
        describe=lambda subset: f"ImageNet cache {root} at {size}, {subset}",
    )
