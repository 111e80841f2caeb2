"""Retrain a recorded trial exactly: what it ran with, and the command that runs it again.

A proxy top-1 is a function of the architecture, the proxy, the data, the seeds, the
device, the thread count and the library versions; every trained trial records them
all (``record.py``), so ``ccsearch train --from-trial RUN N`` and the command printed
after a run give the recorded top-1 again, bit for bit, on the same machine and thread
count.  What differs from the record is named before training, not discovered after.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ccsearch.arch import ArchSpec
from ccsearch.errors import UserError
from ccsearch.provenance import versions
from ccsearch.search.record import TRAINED, TrialRecord
from ccsearch.search.run import PROXY, SearchRun
from ccsearch.train import ProxyConfig


@dataclass(frozen=True)
class TrialInputs:
    """Everything ``ccsearch train`` needs to retrain one recorded trial."""

    record: TrialRecord
    spec: ArchSpec
    proxy: ProxyConfig
    data: str | None  # the run's --data (None: the proxy's own, embedded data)
    seeds: list[int]
    threads: int


def trial_inputs(search: SearchRun, number: int) -> TrialInputs:
    records = search.records()
    if not 0 <= number < len(records):
        raise UserError(f"--from-trial {number}: the study has trials 0 to {len(records) - 1}")
    record = records[number]
    if record.status not in TRAINED or record.spec is None:
        status = record.status.value if record.status else "still running"
        raise UserError(f"--from-trial {number} was not trained ({status}): nothing to reproduce")
    seeds = record.seeds or [record.seed]
    stored = search.study.user_attrs.get(PROXY)  # as trained, whatever the preset says now
    proxy = ProxyConfig.from_dict(stored) if stored else search.config.proxy_config()
    return TrialInputs(record, ArchSpec.from_dict(record.spec), proxy,
                       search.study.user_attrs.get("data_arg"), seeds, record.threads)


def differences(record: TrialRecord, data_checksum: str, threads: int, device: str) -> list[str]:
    """What this process would change against the record: each line says what differs."""
    lines = []
    recorded_device = record.device.split(":")[0]
    if recorded_device and device != recorded_device:
        lines.append(f"training on {device}, the trial trained on {record.device}")
    if record.data_checksum and data_checksum != record.data_checksum:
        lines.append(f"the data differs (checksum {data_checksum}, the trial had "
                     f"{record.data_checksum})")
    if record.threads and threads != record.threads:
        lines.append(f"{threads} threads, the trial ran on {record.threads}")
    if not record.bitwise_reproducible:
        lines.append(f"the trial trained on {record.device}, whose autotuned kernels are not "
                     "bitwise reproducible")
    now = versions()
    for name, version in record.versions.items():
        if now.get(name) != version:
            lines.append(f"{name} {now.get(name)}, the trial ran on {version}")
    return lines


def train_command(folder: Path | str, record: TrialRecord) -> str:
    """The command that retrains a trial of the run in ``folder``."""
    return f"ccsearch train --from-trial {shlex.quote(str(folder))} {record.number}"
