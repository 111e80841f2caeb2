"""The one table of data sources and the single entry point that validates options."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ccsearch.data._common import DataOptions
from ccsearch.data._proxy import ProxyData
from ccsearch.data.cache import is_cache_dir, load_imagenet_cache
from ccsearch.data.cifar import load_cifar10, load_cifar100
from ccsearch.data.cluttered import load_cluttered_digits
from ccsearch.data.digits import load_digits_proxy
from ccsearch.data.downsampled import load_downsampled
from ccsearch.data.glyphs import load_glyphs
from ccsearch.data.imagenet import load_imagenet
from ccsearch.errors import UserError


class Loader(Protocol):
    """A data source: its root (``None`` for the embedded ones) and checked options in,
    a ``ProxyData`` out; every mistake in the files is a ``UserError``."""

    def __call__(self, root: Path | None, options: DataOptions) -> ProxyData: ...


def load_imagenet_any(root: Path | None, options: DataOptions) -> ProxyData:
    """ImageNet JPEG folders, or a cache made by ``ccsearch prepare-data`` (memory-mapped)."""
    if root is not None and is_cache_dir(root):
        return load_imagenet_cache(root, options)
    return load_imagenet(root, options)


SOURCES: dict[str, Loader] = {
    "imagenet": load_imagenet_any,
    "imagenet-downsampled": load_downsampled,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "digits": load_digits_proxy,
    "cluttered-digits": load_cluttered_digits,
    "glyphs": load_glyphs,
}

DEFAULT_SOURCE = "glyphs"


def available_sources() -> list[str]:
    return list(SOURCES)


def load_data(
    source: str,
    root: str | Path | None = None,
    *,
    resolution: int,
    classes: int | None = None,
    images_per_class: int | None = None,
    seed: int = 0,
) -> ProxyData:
    """Load a proxy data set by registry name; every user mistake becomes a ``UserError``."""
    loader = SOURCES.get(source)
    if loader is None:
        raise UserError(f"unknown data source {source!r}; known: {', '.join(SOURCES)}")
    options = DataOptions(
        resolution=resolution, classes=classes, images_per_class=images_per_class, seed=seed
    )
    return loader(None if root is None else Path(root).expanduser(), options)


def parse_data_arg(text: str | None, default: str = DEFAULT_SOURCE) -> tuple[str, Path | None]:
    """Read the CLI's ``--data``: ``SOURCE``, ``SOURCE=PATH`` or a ``PATH`` whose format is detected.

    ``None`` means the proxy's default source (the embedded digits unless it says otherwise).
    """
    if text is None:
        return default, None
    if "=" in text:
        source, _, path = text.partition("=")
        if source not in SOURCES:
            raise UserError(f"unknown data source {source!r} in --data {text!r}; known: {', '.join(SOURCES)}")
        return source, Path(path).expanduser()
    if text in SOURCES:
        return text, None
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(
            f"--data {text!r} is neither a data source ({', '.join(SOURCES)}) nor an existing path"
        )
    return detect_source(path), path


def detect_source(path: Path) -> str:
    """Tell a data folder's format from the files the real data sets ship with."""
    if is_cache_dir(path) or (path / "train").is_dir():
        return "imagenet"
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if "data_batch_1" in names or "cifar-10-batches-py" in names:
            return "cifar10"
        if {"train", "meta"} <= names or "cifar-100-python" in names:
            return "cifar100"
        if any(name.endswith(".npz") for name in names):
            return "imagenet-downsampled"
    raise UserError(
        f"cannot tell the data format of {path}; name it as SOURCE=PATH with SOURCE one of "
        f"{', '.join(SOURCES)}"
    )
