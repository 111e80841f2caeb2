"""``n`` ``ccsearch worker`` processes on this machine, all on the study's storage.

Each worker is an in-process backend of its own (an equal share of this process's CPUs);
this process only watches the study.  Worker ``i`` gets entry ``i % k`` of this process's
``CUDA_VISIBLE_DEVICES`` (indices or GPU/MIG UUIDs), or GPU ``i % k`` of the ``k`` it sees;
with ``--device cuda:N`` every worker gets GPU ``N``.  A worker then sees its one GPU as
``cuda``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

from ccsearch.errors import UserError
from ccsearch.provenance import usable_cpus
from ccsearch.search import policy
from ccsearch.search.backends import Progress
from ccsearch.search.run import SearchRun
from ccsearch.validate import at_least

STORAGE_ENV = "CCSEARCH_STORAGE"  # where ``ccsearch worker`` finds the storage URL by default
WATCH = 2.0  # seconds between looks at the study for the progress bar


def worker_devices(n: int, visible: str | None, gpus: int, index: int | None = None
                   ) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``n`` workers (None: leave it as it is).

    ``visible``: this process's ``CUDA_VISIBLE_DEVICES`` (None: unset); ``gpus``: how many
    GPUs this process sees; ``index``: the N of ``--device cuda:N`` (None: spread)."""
    entries = [str(i) for i in range(gpus)]
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if not entries:  # set but empty: no GPU for anyone
            return [visible] * n
    if not entries:
        return [None] * n
    if index is not None:
        return [entries[index]] * n
    return [entries[i % len(entries)] for i in range(n)]


@dataclass
class WorkerProcesses:
    n: int
    data: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        at_least("--workers", self.n, 1)

    def run(self, search: SearchRun, progress: Progress | None = None) -> None:
        import torch

        threads = max(1, usable_cpus() // self.n)  # the CPUs this process may use
        gpus = torch.cuda.device_count() if self.device != "cpu" else 0
        _, colon, index = self.device.partition(":")
        devices = worker_devices(self.n, os.environ.get("CUDA_VISIBLE_DEVICES"), gpus,
                                 int(index) if colon else None)
        device = "cuda" if colon else self.device  # a worker sees its GPU only, as cuda
        procs = []
        for visible in devices:
            # The URL goes by environment, not argv: other users can read a process's argv.
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), STORAGE_ENV: search.storage_url}
            if visible is not None:
                env["CUDA_VISIBLE_DEVICES"] = visible
            cmd = [sys.executable, "-m", "ccsearch.cli", "worker", "--study",
                   search.config.name, "--device", device, "--quiet"]
            if self.data:
                cmd += ["--data", self.data]
            procs.append(subprocess.Popen(cmd, env=env))
        try:
            while running := [p for p in procs if p.poll() is None]:
                if progress is not None:
                    progress(search.records())
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running[0].wait(timeout=WATCH)
        finally:
            for p in procs:  # Ctrl-C reaches the workers too; they record their trial
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.terminate()
            if progress is not None:
                progress(search.records())
        died = [f"worker {i} (pid {p.pid}) {_ended(p.returncode)}"
                for i, p in enumerate(procs, start=1) if p.returncode not in (0, None)]
        if not died:
            return
        if policy.done(search.records(), search.config.wanted):
            # The others failed its trial (its owner is dead on this machine) and retried it.
            print(f"ccsearch: {'; '.join(died)}; the other workers took over and the study "
                  "is complete", file=sys.stderr)
            return
        raise UserError(f"{'; '.join(died)}, and the study is not complete: continue it with "
                        "the same command and --resume (see the workers' messages above)")


def _ended(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"failed with exit code {code}"
