"""Export a chosen architecture as model files another program can run, and load it back.

``export_model`` writes, into a folder created beside its destination and renamed
(nothing half-written is ever left):

- ``arch.json``: the ArchSpec plus provenance (study, trial, seed, MADDs and their
  convention, params, proxy top-1 with its proxy and data, versions), which weights
  the files hold, and the latency measured on the exporting machine;
- ``model.safetensors``: the full model's weights (224px, its classes);
- ``model.pt2``: a ``torch.export`` program with a dynamic batch dimension, which runs
  with torch alone (``torch.export.load``; load only programs you trust);
- ``model.onnx`` (``onnx=True``, the ``onnx`` extra): checked against PyTorch with
  onnxruntime.  Its batch is dynamic: pointwise CondConv layers export as one batched
  matmul and kxk CondConv layers run their E experts as one convolution and mix the
  outputs (the grouped convolution over the batch would fix the batch size).  The
  outputs are the same; those kxk layers cost E times their multiply-adds there.

``load(folder)`` rebuilds the ``nn.Module`` from ``arch.json`` and the safetensors
file; nothing on that path unpickles.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from ccsearch.arch import ArchSpec, build_model
from ccsearch.checkpoint import load_weights
from ccsearch.errors import UserError
from ccsearch.layers import CondConv2d
from ccsearch.madds import count_madds
from ccsearch.provenance import versions

if TYPE_CHECKING:
    from ccsearch.search.record import TrialRecord
    from ccsearch.search.run import SearchRun

FORMAT = "ccsearch-export-1"
MAX_BATCH = 4096  # the dynamic batch dimension's upper bound in model.pt2 / model.onnx
ONNX_TOLERANCE = 1e-4


def export_model(
    spec: ArchSpec,
    out: Path,
    *,
    provenance: dict[str, Any] | None = None,
    weights: Path | None = None,
    seed: int = 0,
    onnx: bool = False,
    force: bool = False,
    latency: dict[str, Any] | None = None,
) -> Path:
    """Write ``out`` (see the module docstring); ``weights``: a safetensors file for
    ``spec`` (else fresh weights from ``seed``)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} exists and is not empty: pass --force to replace it")
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    if weights is not None:
        load_weights(model, weights)
    report = count_madds(spec)
    if count_madds(model).madds != report.madds:  # the module, as loaded, counts the same
        raise AssertionError("the exported module does not count like its spec")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"))
        example = torch.randn(2, 3, 224, 224)
        # Into memory first: torch's C++ archive writer aborts the whole process when
        # the disk fills mid-write; Python's write raises OSError (ENOSPC) instead.
        program = io.BytesIO()
        torch.export.save(_export_program(model, example), program)
        (tmp / "model.pt2").write_bytes(program.getbuffer())
        files = ["arch.json", "model.safetensors", "model.pt2"]
        onnx_check = None
        if onnx:
            onnx_check = _export_onnx(model, example, tmp / "model.onnx")
            files.append("model.onnx")
        meta = {
            "format": FORMAT,
            "spec": spec.to_dict(),
            "madds": report.madds,
            "convention": report.convention,
            "resolution": 224,
            "params": report.params,
            "weights": f"from {weights}" if weights is not None else f"freshly initialised (seed {seed})",
            "provenance": provenance or {},
            "versions": versions(),
            "files": files,
            "onnx": onnx_check,
            "latency": latency,
        }
        (tmp / "arch.json").write_text(json.dumps(meta, indent=2) + "\n")
        for file in tmp.iterdir():
            file.chmod(0o644)  # readable by the rest of a team, like the run's files
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        unchanged = "(the previous export is unchanged)"
        if isinstance(err, OSError):
            raise OSError(err.errno, f"{err.strerror} {unchanged}", str(out)) from None
        if "No space left on device" in str(err):  # safetensors wraps it
            raise OSError(errno.ENOSPC, f"No space left on device {unchanged}", str(out)) from None
        raise
    return out


def trial_provenance(search: SearchRun, record: TrialRecord) -> dict[str, Any]:
    """Where an exported trial comes from, for ``arch.json``: its study, trial, seed and
    proxy top-1, and the study's references (baseline, the paper's design) on the same
    proxy, each with its points over the baseline."""
    from ccsearch.results import trials_table
    from ccsearch.search.storage import shown_url

    def points(value) -> float | None:
        return None if pd.isna(value) else float(value)

    table = trials_table(search.study)
    refs = table[(table["reference"] != "") & (table["status"] == "ok")]
    row = table[table["trial"] == record.number].iloc[0]
    return {
        "study": search.config.name,
        "storage": shown_url(search.storage_url),
        "trial": record.number,
        "reference": record.reference,
        "seed": record.seed,
        "seeds": record.seeds,
        "proxy": record.proxy,
        "data": record.data,
        "data_checksum": record.data_checksum,
        "proxy_top1": record.top1,
        "proxy_top1_std": record.top1_std,
        "vs_baseline": points(row["vs_baseline"]),
        "smoke_test": record.smoke_test,
        "budget": search.config.budget,
        "references": [
            {"name": r["reference"], "trial": int(r["trial"]), "proxy_top1": float(r["top1"]),
             "madds": int(r["madds"]),
             "vs_baseline": points(r["vs_baseline"])}
            for _, r in refs.iterrows()
        ],
    }


def load(path: str | Path) -> nn.Module:
    """The model an export folder holds (``arch.json`` + ``model.safetensors``), in eval mode."""
    folder = Path(path)
    try:
        meta = json.loads((folder / "arch.json").read_text())
        spec = ArchSpec.from_dict(meta["spec"])
    except FileNotFoundError:
        raise UserError(f"{folder} is not a ccsearch export (no arch.json)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{folder / 'arch.json'} is unreadable: {err}") from None
    model = build_model(spec)
    load_weights(model, folder / "model.safetensors")
    return model.eval()


def _export_program(model: nn.Module, example: torch.Tensor):
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


@contextlib.contextmanager
def _batch_independent(model: nn.Module) -> Iterator[None]:
    """CondConv layers in forms whose graph does not depend on the batch size."""
    saved = {}
    for layer in model.modules():
        if isinstance(layer, CondConv2d):
            saved[layer] = layer.impl
            layer.impl = "bmm" if layer.pointwise else "experts"
    try:
        yield
    finally:
        for layer, impl in saved.items():
            layer.impl = impl


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The exporter's notes (e.g. torchvision ops it skips) are not the user's concern."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """``model.onnx`` with a dynamic batch, checked with onnxruntime at batch 1 and 3."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--onnx needs the onnx extra: pip install 'ccsearch[onnx]'") from None
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with _batch_independent(model), torch.no_grad(), _quiet("torch.onnx"):
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["images"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False,
                          external_data=False)  # one file: these models are far below 2 GB
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0  # relative to the largest logit: float32 itself differs from float64 by ~1e-6
    for n in (1, 3):
        x = torch.randn(n, 3, 224, 224)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        scale = max(1.0, float(expected.abs().max()))
        worst = max(worst, float((got - expected).abs().max()) / scale)
    if worst > ONNX_TOLERANCE:
        raise AssertionError(f"onnxruntime differs from PyTorch by {worst:.2e} (relative)")
    return {"batch": "dynamic", "checked_batches": [1, 3], "max_relative_diff": worst}
