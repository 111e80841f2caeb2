"""The in-process backend: ask, evaluate and tell in this process until the study is done.

``ccsearch run`` runs it (one process), and so does every ``ccsearch worker``; the claim
policy makes any number of them on one storage train exactly the study's ``trials``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ccsearch.data import ProxyData
from ccsearch.search import policy
from ccsearch.search.backends import Progress
from ccsearch.search.objective import Evaluator, Trainer, measured_on
from ccsearch.search.pruners import make_pruner
from ccsearch.search.recovery import Heartbeat, ask, reap, release_session
from ccsearch.search.run import SearchRun
from ccsearch.train import device_data, load_proxy_data, resolve_device, train_candidate

POLL = 1.0  # seconds between looks at the study while every training slot is held


@dataclass
class InProcess:
    data: str | None = None  # --data; ignored when proxy_data is given
    device: str = "auto"
    proxy_data: ProxyData | None = None  # already loaded (the CLI checks it before writing)
    trainer: Trainer | None = None  # the seam: tests run the policy without training

    def run(self, search: SearchRun, progress: Progress | None = None) -> None:
        proxy = search.config.proxy_config()
        trainer = self.trainer
        if trainer is None:
            device = resolve_device(self.device)
            data = self.proxy_data or load_proxy_data(proxy, self.data)
            on_device = device_data(data, device, proxy.max_val_images)
            measured = measured_on(proxy.name, on_device.description, on_device.smoke_test,
                                   str(device))

            def trainer(spec, seed, on_epoch):
                return train_candidate(spec, proxy, on_device, device, on_epoch, seed=seed)
        else:
            measured = measured_on(proxy.name, "(a given trainer)", False, "cpu")
        evaluator = Evaluator(
            search.config,
            search.space,
            make_pruner(search.config.pruner, search.config.startup_trials),
            proxy.epochs,
            measured,
            sampler_seed=search.sampler_seed,
        )
        run_trials(search, evaluator, trainer, progress)


def run_trials(search: SearchRun, evaluator: Evaluator, trainer: Trainer,
               progress: Progress | None = None) -> None:
    """Evaluate trials until the study has its trained candidates.

    While every slot is held by trials of other processes this process waits: a holder
    may back off or die (its trial is then failed and retried), and the study must not
    end short."""
    wanted = search.config.wanted
    evaluator.on_interrupt = lambda: release_session(search.storage)
    with Heartbeat(search.study, search.storage) as heartbeat:
        while True:
            reap(search.study)
            records = search.records()
            if progress is not None:
                progress(records)
            if policy.done(records, wanted) or search.exhausted(records):
                return
            if policy.slots_full(records, wanted):
                time.sleep(POLL)
                continue
            trial = ask(search.study)
            heartbeat.add(trial.number)
            try:
                evaluator.evaluate(trial, trainer)
            finally:
                heartbeat.discard(trial.number)
