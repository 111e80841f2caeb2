"""Backends run a study's trials until it has its trained candidates.

Each one is a small object with ``run(search, progress)``; they share the trial steps
(``ccsearch/search/objective.py``), the claim policy and the records, so a study's
results do not depend on which backend, process or machine ran a trial:

- ``InProcess``: ask, evaluate and tell in this process (``ccsearch run``, ``worker``);
- ``WorkerProcesses``: ``n`` ``ccsearch worker`` processes on the study's storage;
- ``RayTune``: Ray Tune trials, told by the driver, which alone writes the storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ccsearch.search.record import TrialRecord
from ccsearch.search.run import SearchRun

# Called with every trial's record whenever the study may have changed (progress bars).
Progress = Callable[[list[TrialRecord]], None]


class Backend(Protocol):
    def run(self, search: SearchRun, progress: Progress | None = None) -> None: ...


def __getattr__(name: str):
    """Backends by name, imported on first use (Ray is heavy)."""
    if name == "InProcess":
        from ccsearch.search.backends.local import InProcess

        return InProcess
    if name == "WorkerProcesses":
        from ccsearch.search.backends.workers import WorkerProcesses

        return WorkerProcesses
    if name in ("RayTune", "RayOptions"):
        from ccsearch.search.backends import ray_tune

        return getattr(ray_tune, name)
    raise AttributeError(name)
