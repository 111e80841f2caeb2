"""The GPU paths' logic, tested where it can be without a GPU: which GPU each worker and
Ray trial gets, the precision by compute capability, the CPU threads from the affinity
mask, the data uploaded once and without a host copy, and out-of-memory or a stop
recorded and freed.  The one check that needs a GPU (no host-device sync in a step)
runs where there is one."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from ccsearch.arch import get_backbone
from ccsearch.data import ProxyData, load_data
from ccsearch.provenance import usable_cpus
from ccsearch.search.backends.ray_tune import ray_trial_device
from ccsearch.search.backends.workers import worker_devices
from ccsearch.train import get_proxy, train_candidate
from ccsearch.train.device import (
    DeviceData,
    amp_dtype,
    amp_dtype_for,
    device_data,
    is_out_of_memory,
    to_device,
)

TINY = get_backbone("mobilenet_v1", 0.25)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", resolution=32)


# ---- one GPU per worker -------------------------------------------------------------------


def test_workers_take_the_parents_visible_devices_in_turn():
    assert worker_devices(4, "4,5,6,7", 4) == ["4", "5", "6", "7"]
    assert worker_devices(5, "4, 6", 2) == ["4", "6", "4", "6", "4"]
    uuids = "GPU-8f6e3c1a-0b1d-4e2f-9a3b-1c2d3e4f5a6b,MIG-2a1b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
    assert worker_devices(3, uuids, 2) == [uuids.split(",")[0], uuids.split(",")[1], uuids.split(",")[0]]


def test_workers_without_a_visible_list_spread_over_the_gpus_seen():
    assert worker_devices(3, None, 2) == ["0", "1", "0"]
    assert worker_devices(2, None, 0) == [None, None]  # no GPU: the environment stays
    assert worker_devices(2, "", 0) == ["", ""]  # hidden on purpose: stays hidden


def test_device_cuda_n_puts_every_worker_on_entry_n_of_the_parents_list():
    assert worker_devices(3, "4,5,6,7", 4, index=2) == ["6", "6", "6"]
    assert worker_devices(2, None, 4, index=3) == ["3", "3"]


def test_a_ray_trial_trains_on_the_gpu_ray_assigned_whatever_cuda_n_said():
    assert ray_trial_device("cuda:3", 1.0) == "cuda"  # Ray shows it its GPU as cuda:0
    assert ray_trial_device("auto", 0.25) == "cuda"
    assert ray_trial_device("auto", 0) == "cpu"
    assert ray_trial_device("cpu", 1.0) == "cpu"


# ---- precision and threads ----------------------------------------------------------------


@pytest.mark.parametrize("capability, dtype", [
    ((6, 0), torch.float16),  # P100
    ((7, 0), torch.float16),  # V100: no bf16 convolutions in cuDNN, though emulated
    ((7, 5), torch.float16),  # T4
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100
])
def test_autocast_dtype_by_compute_capability(capability, dtype):
    assert amp_dtype_for(capability) == dtype


def test_the_cpu_trains_in_full_precision():
    assert amp_dtype(CPU) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks on this OS")
def test_threads_come_from_the_affinity_mask_not_the_machine():
    """A process pinned to one CPU (as in a container or a SLURM allocation) counts one,
    and so do the workers it would start, whatever ``os.cpu_count()`` says."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from ccsearch.provenance import usable_cpus; print(usable_cpus(), os.cpu_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    usable, machine = map(int, out.stdout.split())
    assert usable == 1 and machine >= 1
    assert usable_cpus() == len(os.sched_getaffinity(0))


# ---- the data, once and in place ----------------------------------------------------------


def _first(data: ProxyData, train: int, val: int = 32) -> ProxyData:
    return replace(data, train_x=data.train_x[:train], train_y=data.train_y[:train],
                   val_x=data.val_x[:val], val_y=data.val_y[:val])


def _read_only(data: ProxyData, tmp_path) -> ProxyData:
    """The same data as a cache holds it: read-only memory maps."""
    arrays = {}
    for name in ("train_x", "train_y", "val_x", "val_y"):
        path = tmp_path / f"{name}.npy"
        np.save(path, getattr(data, name))
        arrays[name] = np.load(path, mmap_mode="r")
        assert not arrays[name].flags.writeable
    return replace(data, **arrays)


def test_read_only_arrays_reach_the_device_without_a_host_copy(digits, tmp_path):
    data = _read_only(digits, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even torch's "array is not writable" warning
        on_device = DeviceData.from_proxy_data(data, CPU)  # the upload itself, not the cache
    for name in ("train_x", "val_x"):
        tensor, array = getattr(on_device, name), getattr(data, name)
        assert tensor.data_ptr() == array.ctypes.data  # the memory map itself
        assert tensor.shape == (array.shape[0], 3, array.shape[1], array.shape[2])  # NCHW
        assert torch.equal(tensor[5], torch.from_numpy(np.array(array[5])).permute(2, 0, 1))
    assert on_device.train_y.data_ptr() == data.train_y.ctypes.data


def test_the_upload_goes_in_chunks_into_one_device_tensor(digits, monkeypatch):
    """The GPU path's copy loop, run into the meta device: every row arrives once."""
    import ccsearch.train.device as device

    monkeypatch.setattr(device, "UPLOAD_CHUNK_BYTES", digits.train_x[:1].nbytes * 7)
    out = to_device(digits.train_x, torch.device("meta"))
    assert out.shape == digits.train_x.shape and out.device.type == "meta"


def test_a_process_uploads_its_data_once_for_all_its_trials(digits, tmp_path):
    first = device_data(digits, CPU, 100)
    assert device_data(digits, CPU, 100) is first  # the next trial (a reused Ray actor)
    same_data = _read_only(digits, tmp_path)  # another copy of the same images: same checksum
    assert device_data(same_data, CPU, 100) is first
    assert device_data(digits, CPU, 50) is not first  # another validation size
    assert len(device_data(digits, CPU, 50).val_y) == 50


# ---- out of memory and stops --------------------------------------------------------------


@pytest.mark.parametrize("message", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
])
def test_allocation_failures_of_cublas_and_cudnn_count_as_out_of_memory(message):
    assert is_out_of_memory(RuntimeError(message))


def test_other_errors_are_not_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
])
def test_out_of_memory_in_training_is_a_failed_result_with_its_reason(digits, error):
    def after_epoch(epoch, top1):
        raise error  # where the next step's allocation would fail

    proxy = get_proxy("smoke-digits", epochs=2, batch_size=32)
    result = train_candidate(TINY, proxy, _first(digits, 64), "cpu", after_epoch)
    assert result.status == "failed" and result.reason.startswith("out of memory: ")
    assert result.epochs == 1 and len(result.curve) == 1


def test_any_other_error_in_training_is_raised(digits):
    def after_epoch(epoch, top1):
        raise ValueError("a bug")

    proxy = get_proxy("smoke-digits", epochs=1, batch_size=32)
    with pytest.raises(ValueError, match="a bug"):
        train_candidate(TINY, proxy, _first(digits, 64), "cpu", after_epoch)


def test_a_stop_inside_a_report_leaves_no_frame_holding_the_model(digits):
    """Ray's ``tune.report`` raises SystemExit when ASHA stops a trial: the trainer frees
    the model before it passes the stop on, or the next trial in that actor finds the GPU
    memory still held."""
    def report(epoch, top1):
        raise SystemExit(0)

    proxy = get_proxy("smoke-digits", epochs=2, batch_size=32)
    with pytest.raises(SystemExit) as stopped:
        train_candidate(TINY, proxy, _first(digits, 64), "cpu", report)
    frames, tb = [], stopped.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    held = [name for f in frames for name, v in f.f_locals.items() if isinstance(v, nn.Module)]
    assert frames and not held


def test_a_cpu_trial_is_recorded_as_bitwise_reproducible(digits):
    proxy = get_proxy("smoke-digits", epochs=1, batch_size=32)
    assert train_candidate(TINY, proxy, _first(digits, 64), "cpu").bitwise_reproducible


# ---- on a GPU -----------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: none on this machine")
def test_a_training_step_never_waits_for_the_gpu(digits):
    """The syncs of an epoch (its draws, its loss, its evaluation) do not grow with its
    steps: the same count for 2 and for 8 steps per epoch."""
    def syncs(images: int) -> int:
        proxy = get_proxy("smoke-digits", epochs=1, batch_size=32)
        data = device_data(_first(digits, images, 64), torch.device("cuda"))  # uploaded before
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                result = train_candidate(TINY, proxy, data, "cuda")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert result.status == "ok", result.reason
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(64) == syncs(256)


def test_retraining_a_gpu_trial_warns_that_it_is_not_bitwise_reproducible():
    from ccsearch.search.record import TrialRecord
    from ccsearch.search.reproduce import differences

    gpu = TrialRecord(device="cuda:0", bitwise_reproducible=False)
    assert any("not bitwise reproducible" in line for line in differences(gpu, "", 0, "cuda"))
    assert differences(TrialRecord(device="cpu"), "", 0, "cpu") == []
