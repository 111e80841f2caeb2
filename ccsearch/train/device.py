"""Where a trial trains: its device, its precision, its CPU threads, and its data there.

Plain functions wherever the logic allows, so that what a GPU machine will do is tested
on a CPU one.  The rules come from PyTorch's documented behaviour:

- ``torch.cuda.synchronize()``, ``is_bf16_supported()`` and new tensors without a device
  act on the *current* device, GPU 0 unless set: ``prepare`` sets it, so a process given
  ``cuda:3`` never opens a context on GPU 0;
- bf16 needs compute capability 8.0 (Ampere) for cuDNN's convolutions; older GPUs (V100,
  T4) get fp16 with a gradient scaler (``is_bf16_supported()`` says yes there, counting
  emulation);
- the data goes to the device once per process, without pinning the whole set (PyTorch's
  caching host allocator rounds a pinned block up to a power of two and never frees it),
  and is reused by every trial that process runs (Ray reuses its actors).
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ccsearch.data import ProxyData

UPLOAD_CHUNK_BYTES = 64 << 20  # host-to-device copies of at most this much at a time


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the GPU when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def amp_dtype_for(capability: tuple[int, int]) -> torch.dtype:
    """The autocast dtype for a GPU of this compute capability: bf16 from Ampere (8.0) on,
    fp16 (with a gradient scaler) before it, where cuDNN has no bf16 convolutions."""
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training on ``device``; None: full precision (the CPU)."""
    if device.type != "cuda":
        return None
    return amp_dtype_for(torch.cuda.get_device_capability(device))


def mixed_precision(device: torch.device):
    """The autocast context and gradient scaler of training on ``device``: fp16 (pre-Ampere
    GPUs) needs loss scaling, whose step reads the overflow flag (a sync); bf16 and the
    CPU's fp32 need none."""
    from contextlib import nullcontext

    dtype = amp_dtype(device)
    autocast = torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()
    return autocast, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def prepare(device: torch.device) -> None:
    """Make ``device`` this process's current GPU (nothing then touches GPU 0 by default),
    and let cuDNN pick its fastest kernels: a trial's shapes are fixed (the ragged last
    batch is dropped), at the cost of bitwise reproducibility on GPUs."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True


def bitwise_reproducible(device: torch.device) -> bool:
    """Whether the same inputs give the same top-1 to the last bit: on the CPU, with the
    same thread count; not on a GPU (cuDNN's autotuned and atomics-based kernels)."""
    return device.type != "cuda"


ALLOCATION_FAILURES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "CUBLAS_STATUS_NOT_INITIALIZED")


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU allocation failure: ``OutOfMemoryError``, or the ``RuntimeError`` cuBLAS and
    cuDNN raise when their own allocations fail."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in ALLOCATION_FAILURES)


def release_memory(device: torch.device) -> None:
    """Hand a finished trial's GPU memory back, so the next trial in this process has it
    (call it once nothing refers to the trial's model any more)."""
    if device.type == "cuda":
        gc.collect()  # hooks and closures can keep a model in a reference cycle
        torch.cuda.empty_cache()


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``, with no host copy: a read-only array (a cache's
    memmap, Ray's object store) is read in place; a GPU gets it in chunks of pageable
    memory, so nothing of the size of the set is ever pinned or duplicated on the host."""
    with warnings.catch_warnings():  # read-only: nothing ever writes the proxy images
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        host = torch.from_numpy(array)
    if device.type == "cpu":
        return host
    out = torch.empty(host.shape, dtype=host.dtype, device=device)
    rows = max(1, UPLOAD_CHUNK_BYTES // max(1, host[:1].nbytes))
    for start in range(0, len(host), rows):
        out[start : start + rows].copy_(host[start : start + rows])
    return out


@dataclass
class DeviceData:
    """The proxy data on the device: uint8 images (NCHW shape; in memory as the data set
    holds them, NHWC, which is channels-last), labels and the normalisation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    mean: torch.Tensor  # [1, 3, 1, 1], in 0..255 units
    std: torch.Tensor
    num_classes: int
    description: str
    smoke_test: bool
    checksum: str = ""  # ProxyData.checksum() of the data it was made from

    @classmethod
    def from_proxy_data(
        cls, data: ProxyData, device: torch.device, max_val_images: int | None = None
    ) -> DeviceData:
        val_x, val_y = data.val_x, data.val_y
        if max_val_images is not None and len(val_y) > max_val_images:
            val_x, val_y = val_x[:max_val_images], val_y[:max_val_images]
        sample = data.train_x[: min(len(data.train_x), 10_000)].astype(np.float32)
        mean = sample.mean(axis=(0, 1, 2))
        std = sample.std(axis=(0, 1, 2)) + 1e-3

        def images(array: np.ndarray) -> torch.Tensor:  # NHWC memory seen as NCHW: a view
            return to_device(array, device).permute(0, 3, 1, 2)

        return cls(
            train_x=images(data.train_x),
            train_y=to_device(data.train_y, device),
            val_x=images(val_x),
            val_y=to_device(val_y, device),
            mean=torch.tensor(mean, device=device).view(1, 3, 1, 1),
            std=torch.tensor(std, device=device).view(1, 3, 1, 1),
            num_classes=data.num_classes,
            description=data.description,
            smoke_test=data.is_smoke_test,
            checksum=data.checksum(),
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


_on_device: tuple[tuple, DeviceData] | None = None  # this process's data, kept for its next trial


def device_data(data: ProxyData | DeviceData, device: torch.device,
                max_val_images: int | None = None) -> DeviceData:
    """``data`` on ``device``, uploaded once per process: the next trial with the same data
    (by checksum), device and validation size reuses it.  One set is kept at a time."""
    global _on_device
    if isinstance(data, DeviceData):
        return data
    key = (data.checksum(), str(device), max_val_images, len(data.train_y), len(data.val_y))
    if _on_device is not None and _on_device[0] == key:
        return _on_device[1]
    _on_device = None  # the old set goes before the new one arrives
    release_memory(device)
    on_device = DeviceData.from_proxy_data(data, device, max_val_images)
    _on_device = (key, on_device)
    return on_device
