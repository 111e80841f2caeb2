"""What a result was measured with, beyond its inputs: the library versions.

A proxy top-1 is reproducible only on the same data, seed, device, thread count and
library versions; trial records and exported models carry them all.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (a container's or a SLURM
    allocation's cpuset), not ``os.cpu_count()``, the whole machine; threads per worker
    come from it (oversubscribed, training runs 10-40x slower)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def versions() -> dict[str, str]:
    import optuna
    import torch

    from ccsearch import __version__

    return {"ccsearch": __version__, "torch": torch.__version__, "optuna": optuna.__version__}
