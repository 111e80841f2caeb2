"""Training checkpoints (``ccsearch train --save DIR``, ``--resume-from DIR``).

A checkpoint folder holds ``checkpoint.json`` (the spec trained, the candidate it came
from, the proxy, epochs done, curves, seed), ``model.safetensors`` (the weights) and
``optimizer.pt`` (optimizer and sampling state, read back with ``weights_only=True``).
Nothing on the load path unpickles arbitrary objects.  Folders are written beside
their destination and renamed, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ccsearch.arch import ArchSpec
from ccsearch.errors import UserError

FORMAT = "ccsearch-checkpoint-1"


@dataclass
class Checkpoint:
    spec: ArchSpec  # the model trained: the candidate adapted to the proxy (classes, width)
    candidate: ArchSpec  # the architecture as searched (224px, 1000 classes)
    proxy: dict[str, Any]
    data: str
    seed: int
    epochs_done: int
    curve: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None
    generator_state: torch.Tensor | None = None
    folder: Path | None = None  # where it was read from (its model.safetensors)


def save_checkpoint(folder: Path, model: nn.Module, checkpoint: Checkpoint) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": checkpoint.optimizer_state, "generator": checkpoint.generator_state},
                   tmp / "optimizer.pt")
        meta = {
            "format": FORMAT,
            "spec": checkpoint.spec.to_dict(),
            "candidate": checkpoint.candidate.to_dict(),
            "proxy": checkpoint.proxy,
            "data": checkpoint.data,
            "seed": checkpoint.seed,
            "epochs_done": checkpoint.epochs_done,
            "curve": checkpoint.curve,
            "losses": checkpoint.losses,
        }
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint's description and optimizer state (the weights load into a model
    with ``load_weights``)."""
    folder = Path(folder)
    meta_path = folder / "checkpoint.json"
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a ccsearch checkpoint (no checkpoint.json)")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        state = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
        return Checkpoint(
            spec=ArchSpec.from_dict(meta["spec"]),
            candidate=ArchSpec.from_dict(meta["candidate"]),
            proxy=meta["proxy"],
            data=meta["data"],
            seed=int(meta["seed"]),
            epochs_done=int(meta["epochs_done"]),
            curve=list(meta["curve"]),
            losses=list(meta["losses"]),
            optimizer_state=state["optimizer"],
            generator_state=state["generator"],
            folder=folder,
        )
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"checkpoint {folder} is unreadable: {err}") from None


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Safetensors weights into ``model`` (strict); a clear error for a bad file."""
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise UserError(f"{path}: not weights for this model ({str(err).splitlines()[0]})") from None
    return model
