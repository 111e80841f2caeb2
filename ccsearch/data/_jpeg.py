"""Decode image files to fixed-size uint8 RGB, in parallel, skipping the unreadable ones.

Both the direct ImageNet loader and the cache use this, so a cache holds exactly the
pixels a direct load would produce.
"""

from __future__ import annotations

import multiprocessing as mp
import warnings
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ccsearch.provenance import usable_cpus

# Below this many images a process pool costs more to start than it saves.
_POOL_MIN_IMAGES = 64


def decode_image(path: str | Path, resolution: int) -> np.ndarray | None:
    """Shorter side to ``resolution``, centre crop, RGB; ``None`` if the file is unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/palette warnings are noise for 1M images
            with Image.open(path) as img:
                img.draft("RGB", (resolution, resolution))  # JPEG DCT downscale: much faster
                img = img.convert("RGB")
                w, h = img.size
                side = min(w, h)
                left, top = (w - side) / 2, (h - side) / 2
                box = (left, top, left + side, top + side)
                img = img.resize((resolution, resolution), Image.Resampling.BILINEAR, box=box)
                return np.asarray(img, dtype=np.uint8)
    except Exception:  # any decoder failure means "skip this file", never crash
        return None


def _decode_chunk(
    task: tuple[int, list[str]], resolution: int
) -> tuple[int, np.ndarray, np.ndarray]:
    start, paths = task
    out = np.zeros((len(paths), resolution, resolution, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    for i, path in enumerate(paths):
        img = decode_image(path, resolution)
        if img is not None:
            out[i] = img
            ok[i] = True
    return start, out, ok


def _context() -> mp.context.BaseContext:
    """Fork where the OS has it: workers then skip re-importing ``ccsearch`` (and torch).

    Workers only run PIL and numpy, so torch's OpenMP threads in the parent are harmless.
    """
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def default_workers() -> int:
    return usable_cpus()


def decode_into(
    paths: Sequence[str | Path],
    out: np.ndarray,
    resolution: int,
    *,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "decode",
) -> np.ndarray:
    """Decode ``paths[i]`` into ``out[i]``; return a bool mask of the files that decoded."""
    n = len(paths)
    workers = default_workers() if workers is None else workers
    ok = np.zeros(n, bool)
    chunk = max(1, min(256, n // (4 * workers) if workers > 1 else 256))
    tasks = [(s, [str(p) for p in paths[s : s + chunk]]) for s in range(0, n, chunk)]
    fn = partial(_decode_chunk, resolution=resolution)
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        if workers <= 1 or n < _POOL_MIN_IMAGES:
            _collect(map(fn, tasks), out, ok, bar)
        else:
            with _context().Pool(min(workers, len(tasks))) as pool:
                _collect(pool.imap_unordered(fn, tasks), out, ok, bar)
    return ok


def _collect(
    results: Iterable[tuple[int, np.ndarray, np.ndarray]],
    out: np.ndarray,
    ok: np.ndarray,
    bar: tqdm,
) -> None:
    for start, pixels, mask in results:
        out[start : start + len(mask)] = pixels
        ok[start : start + len(mask)] = mask
        bar.update(len(mask))
