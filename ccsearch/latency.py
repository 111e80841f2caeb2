"""Inference latency of a model against its backbone without CondConv, in one run.

The rebuttal's case for CondConv is deployments constrained by inference time, so the
MADD ratio is not enough: this measures the median forward time of both models on the
same machine, interleaved (``torch.utils.benchmark``, adaptive repeats), and reports
the latency ratio beside the MADD ratio.  Figures hold for the machine, thread count
and batch size measured; nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch.utils import benchmark

from ccsearch.arch import ArchSpec, build_model
from ccsearch.errors import UserError
from ccsearch.madds import count_madds
from ccsearch.train.device import prepare
from ccsearch.validate import at_least


@dataclass(frozen=True)
class LatencyRow:
    batch: int
    model_ms: float  # median milliseconds per forward pass
    baseline_ms: float
    ratio: float  # model / baseline latency
    madds_ratio: float  # model / baseline MADDs (paper convention, 224px)

    def to_dict(self) -> dict:
        return asdict(self)


def without_condconv(spec: ArchSpec) -> ArchSpec:
    """The backbone the candidate's CondConv layers replace."""
    return replace(spec, groups=tuple(replace(g, experts=0) for g in spec.groups))


def measure_latency(spec: ArchSpec, batches=(1, 32), device: str = "cpu", threads: int | None = None,
                    min_run_time: float = 0.5, model: torch.nn.Module | None = None) -> list[LatencyRow]:
    """Median latency of ``spec`` (or the given ``model`` of it) against its backbone."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    prepare(torch.device(device))  # cuda:N: the Timer's synchronize acts on the current GPU
    if threads is not None:
        at_least("--threads", threads, 1)
        torch.set_num_threads(threads)
    base_spec = without_condconv(spec)
    madds_ratio = count_madds(spec).madds / count_madds(base_spec).madds
    candidate = (model or build_model(spec)).eval().to(device)
    baseline = build_model(base_spec).eval().to(device)
    rows = []
    for batch in batches:
        at_least("--batch sizes", batch, 1)
        x = torch.randn(batch, 3, 224, 224, device=device)
        times = {"model": [], "baseline": []}
        with torch.inference_mode():
            for net in (candidate, baseline):  # warm-up (oneDNN picks its kernels)
                net(x)
            for _ in range(3):  # interleaved, so drift on a noisy machine hits both
                for name, net in (("model", candidate), ("baseline", baseline)):
                    timer = benchmark.Timer("net(x)", globals={"net": net, "x": x},
                                            num_threads=torch.get_num_threads())
                    times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
        model_ms = 1e3 * sorted(times["model"])[1]
        baseline_ms = 1e3 * sorted(times["baseline"])[1]
        rows.append(LatencyRow(batch, model_ms, baseline_ms, model_ms / baseline_ms, madds_ratio))
    return rows
