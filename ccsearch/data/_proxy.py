"""The one in-memory shape every data source returns, so trainers never care where data came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# Sources that live in the package (generated or bundled): they take no root, and their
# accuracies say nothing about ImageNet.
EMBEDDED_SOURCES = ("cluttered-digits", "digits", "glyphs")


@dataclass(eq=False, repr=False)  # array fields: == would be ambiguous, repr enormous
class ProxyData:
    """Train/val images as uint8 NHWC plus int64 labels in ``0..num_classes-1``.

    Arrays may be read-only memory maps (an ImageNet cache); copy before writing.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    class_names: list[str]
    source: str
    description: str
    _checksum: str = field(default="", init=False)

    def checksum(self) -> str:
        """Of the images and labels of both splits (computed once): the same data, the same
        checksum, whichever machine or cache it was read from."""
        if not self._checksum:
            h = hashlib.blake2b(digest_size=8)
            for array in (self.train_x, self.train_y, self.val_x, self.val_y):
                h.update(str(array.shape).encode())
                h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
            self._checksum = h.hexdigest()
        return self._checksum

    def __post_init__(self) -> None:
        # Loaders build these; a violation here is a bug in a loader, not a user mistake.
        for name in ("train", "val"):
            x = getattr(self, f"{name}_x")
            y = getattr(self, f"{name}_y")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
                raise ValueError(f"{name}_x must be uint8 [N, S, S, 3], got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{name}_y must be int64 [{x.shape[0]}], got {y.dtype} {y.shape}")
            if y.size and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise ValueError(f"{name}_y has labels outside 0..{len(self.class_names) - 1}")
        if self.train_x.shape[1:] != self.val_x.shape[1:]:
            raise ValueError(
                f"train {self.train_x.shape} and val {self.val_x.shape} differ in size"
            )

    def __repr__(self) -> str:
        return (
            f"ProxyData(source={self.source!r}, train={self.train_x.shape}, "
            f"val={self.val_x.shape}, classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def is_smoke_test(self) -> bool:
        """True for the embedded sources: results say nothing about ImageNet."""
        return self.source in EMBEDDED_SOURCES
