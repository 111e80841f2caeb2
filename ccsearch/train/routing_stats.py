"""Is routing sparse?  The routing weights of each CondConv group over the held-out images.

The paper (Fig. 4) finds many routing weights close to 0: each example uses a few of its
experts.  After training, every trained trial records per CondConv group a histogram of
its weights (20 bins over the activation's range), the fraction of weights below 0.05 in
magnitude, and the mean number of experts per example above it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from ccsearch.layers import Routing

BINS = 20
NEAR_ZERO = 0.05
RANGES = {"sigmoid": (0.0, 1.0), "softmax": (0.0, 1.0), "tanh": (-1.0, 1.0)}  # relu: 0..max


class RoutingRecorder:
    """The routing weights of each CondConv group over one pass of the held-out images.

    The trainer's evaluation after each epoch feeds it (``start`` before the pass,
    ``record`` after each batch), so the last epoch's evaluation gives the statistics
    without another pass over the held-out set."""

    def __init__(self, model: nn.Module):
        self.routers = [(int(name.split(".")[1]) + 1, m) for name, m in model.named_modules()
                        if isinstance(m, Routing) and name.startswith("groups.")]
        self.weights: dict[int, list[torch.Tensor]] = defaultdict(list)

    def start(self) -> None:
        self.weights.clear()

    def record(self) -> None:
        for group, router in self.routers:
            if router.last_weights is not None:
                self.weights[group].append(router.last_weights.float().cpu())

    def statistics(self) -> dict[str, dict[str, Any]]:
        """``{group number (1-based, as a string): stats}`` of the last pass."""
        activation = {group: router.activation for group, router in self.routers}
        return {str(group): _stats(torch.cat(w), activation[group])
                for group, w in sorted(self.weights.items())}


@torch.no_grad()
def routing_statistics(model: nn.Module, images: torch.Tensor, normalise, batch_size: int = 256,
                       autocast=None) -> dict[str, dict[str, Any]]:
    """The statistics of one pass of ``images`` through ``model`` (``RoutingRecorder``)."""
    recorder = RoutingRecorder(model)
    if not recorder.routers:
        return {}
    model.eval()
    for start in range(0, len(images), batch_size):
        batch = normalise(images[start:start + batch_size])
        if autocast is not None:
            with autocast:
                model(batch)
        else:
            model(batch)
        recorder.record()
    return recorder.statistics()


def _stats(w: torch.Tensor, activation: str) -> dict[str, Any]:
    lo, hi = RANGES.get(activation, (0.0, max(1.0, float(w.max()))))
    hist = torch.histc(w.clamp(lo, hi), bins=BINS, min=lo, max=hi)
    active = w.abs() > NEAR_ZERO
    return {
        "activation": activation,
        "bins": [lo, hi],
        "hist": [int(x) for x in hist.tolist()],
        "near_zero": float((~active).float().mean()),
        "active": float(active.float().sum(1).mean()),
        "experts": int(w.shape[1]),
    }
