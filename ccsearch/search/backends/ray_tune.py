"""The Ray Tune backend (``ccsearch run --backend ray``): Ray trains, the driver records.

Ray's model is that trials report to the driver; so here the driver alone opens the
study's storage:

- a Tune ``Searcher`` on the driver asks the study's own sampler for an architecture and
  runs the trial's checks (MADDs, budget, claim) there: only candidates that train become
  Ray trials, and over-budget ones cost no Ray trial at all;
- a Ray trial trains the candidate it is given (its spec and seed) on the proxy data it
  gets from Ray's object store, and reports each epoch and its final result;
- a Tune ``Stopper`` on the driver records each epoch and re-checks the claim; Ray's ASHA
  scheduler stops candidates whose per-epoch accuracy falls behind (the study's pruner is
  not used), and ``FailureConfig`` retries a trial whose worker died.

So any storage works with ``--address``, and no worker node needs the run folder or the
data.  ``--resume`` starts a new Tuner on the same study rather than restoring Ray's
experiment folder: the storage is the source of truth.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ccsearch.arch import ArchSpec
from ccsearch.data import ProxyData
from ccsearch.errors import UserError
from ccsearch.interrupts import CtrlC
from ccsearch.search import policy
from ccsearch.search.backends import Progress
from ccsearch.search.objective import Candidate, Evaluator, error_reason, measured_on
from ccsearch.search.pruners import NoPruner
from ccsearch.search.record import Status, this_process
from ccsearch.search.recovery import Heartbeat, ask, reap, release_session
from ccsearch.search.run import MAX_TRIALS_FACTOR, SearchRun
from ccsearch.train import ProxyConfig, TrainResult

CONNECT_TIMEOUT = 10  # seconds to wait for a cluster head to answer before giving up


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start Ray on this machine; "auto" or HOST:PORT: join
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    max_failures: int = 2  # retries of a trial whose worker process died

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial:g}")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial <= 1:
            raise UserError(
                f"--gpus-per-trial must be between 0 and 1 (a trial trains on one device; "
                f"fractions share a GPU), got {self.gpus_per_trial:g}"
            )


def ray_trial_device(device: str, gpus_per_trial: float) -> str:
    """The device a Ray trial trains on: Ray shows a trial only the GPU it assigned, as
    ``cuda`` (index 0), whatever ``--device cuda:N`` said; without GPUs, the CPU."""
    return "cpu" if gpus_per_trial == 0 or device == "cpu" else "cuda"


def ray_trial(config: dict, *, proxy_data: ProxyData, proxy: ProxyConfig, device: str,
              threads: int) -> None:
    """One Ray trial: train the candidate the driver sent; report, never touch the storage."""
    import torch
    from ray import tune

    from ccsearch.train import train_candidate, train_repeated

    torch.set_num_threads(threads)
    worker = this_process()
    steps = len(config["seeds"]) * proxy.epochs  # epochs over all the study's seeds
    step = 0

    def on_epoch(epoch: int, top1: float) -> bool:
        nonlocal step
        step += 1
        if step < steps:  # the last epoch comes with the final result
            tune.report({"epoch": epoch, "step": step, "epoch_top1": top1, "worker": worker})
        return False

    def train(seed: int, report) -> TrainResult:
        return train_candidate(spec, proxy, proxy_data, device, report, seed=seed)

    try:
        spec = ArchSpec.from_dict(config["spec"])
        result = train_repeated(train, config["seeds"], on_epoch)
    except Exception as err:  # reported, not raised: Ray would retry it and hide the message
        result = TrainResult(status="failed", top1=None, device=device, reason=error_reason(err))
    tune.report({"epoch": max(1, result.epochs), "step": max(1, step),
                 "epoch_top1": result.top1 or 0.0, "worker": worker,
                 "train_result": json.dumps(result.to_dict())})  # not flattened


class _Driver:
    """What the searcher, the stopper and the progress callback share on the driver."""

    def __init__(self, search: SearchRun, evaluator: Evaluator, progress: Progress | None):
        self.search = search
        self.evaluator = evaluator
        self.progress = progress
        self.heartbeat = Heartbeat(search.study, search.storage)
        self.candidates: dict[str, Candidate] = {}  # Ray trial id -> its claimed trial
        self.finished = False
        # Ctrl-C during ``tuner.fit`` raises as usual and is also noted here: where Tune's
        # code caught the KeyboardInterrupt the run went on, and a Ctrl-C'd run once exited
        # 0 (the CLI must exit 130).  The stopper then ends the experiment, and the run
        # raises once ``fit`` returns.
        self.ctrl_c = CtrlC(raise_at_once=True)

    def __getstate__(self) -> dict:
        # Tune pickles its configuration for ``Tuner.restore``, which ccsearch does not
        # use (the storage is the checkpoint): nothing of the live state goes along.
        return {}

    def suggest(self) -> dict | None | str:
        """The next candidate to train, None to ask again later, or "finished"."""
        wanted = self.search.config.wanted
        while True:
            reap(self.search.study)
            records = self.search.records()
            self._progress(records)
            if policy.done(records, wanted) or self.search.exhausted(records):
                self.finished = True
                return "finished"
            if policy.slots_full(records, wanted):
                return None  # the last candidates are training: ask again later
            trial = ask(self.search.study)
            self.heartbeat.add(trial.number)
            candidate = self.evaluator.start(trial)
            if candidate is not None:
                return {"candidate": candidate}
            self.heartbeat.discard(trial.number)

    def end(self, candidate: Candidate, result: dict | None, error: bool) -> None:
        """Record how a Ray trial ended: its final report, an error, or a stop."""
        result = result or {}
        if "train_result" in result:
            self.evaluator.finish(candidate, TrainResult(**json.loads(result["train_result"])))
        elif error:
            self.evaluator.fail(candidate, "its Ray trial failed (see the Ray logs of this run)")
        elif candidate.stop is None and not candidate.record.curve:
            self.evaluator.interrupt(candidate, "Ray stopped it before its first epoch")
        else:  # stopped after an epoch: by the claim check (stopper) or by ASHA
            if candidate.stop is None:
                epochs = len(candidate.record.curve)
                candidate.stop = policy.Verdict(Status.PRUNED, f"ASHA stopped it after epoch {epochs}")
            curve = candidate.record.curve
            self.evaluator.finish(candidate, TrainResult(
                status="pruned", top1=curve[-1], curve=curve, epochs=len(curve),
                wall_time=result.get("time_total_s", 0.0), device=candidate.record.device))
        self.heartbeat.discard(candidate.record.number)
        self._progress(self.search.records())

    def interrupt_all(self, reason: str) -> None:
        for candidate in self.candidates.values():
            with contextlib.suppress(Exception):  # the storage may be what failed
                self.evaluator.interrupt(candidate, reason)
        self.candidates.clear()

    def _progress(self, records) -> None:
        if self.progress is not None:
            self.progress(records)


def _tune_classes():
    """Built on first use, so importing ccsearch does not import Ray."""
    from ray.tune import Stopper
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):
        """Tune's searcher over the Optuna study (instead of Tune's ``OptunaSearch``,
        which cannot run ccsearch's checks before a trial starts)."""

        def __init__(self, driver: _Driver) -> None:
            super().__init__()
            self.driver = driver

        def suggest(self, trial_id: str):
            got = self.driver.suggest()
            if got == "finished":
                return Searcher.FINISHED
            if got is None:
                return None
            candidate = got["candidate"]
            self.driver.candidates[trial_id] = candidate
            return {"spec": candidate.record.spec, "seeds": self.driver.search.config.seeds(),
                    "trial": candidate.record.number}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            candidate = self.driver.candidates.pop(trial_id, None)
            if candidate is not None:
                self.driver.end(candidate, result, error)

        def save(self, checkpoint_path: str) -> None:  # the Optuna storage is the checkpoint
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

    class ClaimStopper(Stopper):
        """Records each epoch on the driver and stops a trial that lost its claim."""

        def __init__(self, driver: _Driver) -> None:
            self.driver = driver

        def __call__(self, trial_id: str, result: dict) -> bool:
            candidate = self.driver.candidates.get(trial_id)
            if candidate is None or "train_result" in result:
                return False
            candidate.record.worker = result.get("worker", candidate.record.worker)
            return self.driver.evaluator.after_epoch(
                candidate, int(result["epoch"]), float(result["epoch_top1"])
            )

        def stop_all(self) -> bool:
            return self.driver.ctrl_c.pressed  # should Tune's code have swallowed it

    return StudySearcher, ClaimStopper


@contextlib.contextmanager
def _tune_environment() -> Iterator[None]:
    """Tune's switches for this run only: Ctrl-C raises KeyboardInterrupt (Tune's own
    handler would end the run quietly, and the CLI must exit 130), and no per-trial
    CSV/JSON/TensorBoard logs (the records are in the study)."""
    switches = {"TUNE_DISABLE_SIGINT_HANDLER": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                "RAY_AIR_NEW_OUTPUT": "0"}
    saved = {k: os.environ.get(k) for k in switches}
    os.environ.update(switches)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class RayTune:
    proxy_data: ProxyData
    options: RayOptions = RayOptions()
    device: str = "auto"
    # What a Ray trial runs, with ``ray_trial``'s signature and reports; the benchmark
    # swaps in one that trains nothing, to time the backend's own cost per trial.
    trial_function: Callable[..., None] = ray_trial

    def run(self, search: SearchRun, progress: Progress | None = None) -> None:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        config = search.config
        _start_ray(self.options.address)
        try:
            gpus, fits = self._resources(ray.cluster_resources())
            if self.device.startswith("cuda") and gpus == 0:
                raise UserError(
                    f"--device {self.device} needs --gpus-per-trial > 0 (Ray hides GPUs otherwise)"
                )
            trial_device = ray_trial_device(self.device, gpus)
            proxy = config.proxy_config()
            measured = measured_on(proxy.name, self.proxy_data.description,
                                   self.proxy_data.is_smoke_test, trial_device)
            evaluator = Evaluator(config, search.space, NoPruner(), proxy.epochs, measured,
                                  sampler_seed=search.sampler_seed)
            self.proxy_data.checksum()  # hashed once here: Ray trials get it with the data
            driver = _Driver(search, evaluator, progress)
            searcher_class, stopper_class = _tune_classes()
            if config.pruner == "none":
                scheduler = FIFOScheduler()
            else:  # ASHA on the per-epoch accuracy, rungs at epochs 1, 2, 4, ...
                scheduler = ASHAScheduler(time_attr="step", metric="epoch_top1", mode="max",
                                          max_t=max(2, proxy.epochs * config.repeats),
                                          grace_period=1,
                                          reduction_factor=2, stop_last_trials=False)
            trainable = tune.with_resources(
                tune.with_parameters(self.trial_function, proxy_data=self.proxy_data, proxy=proxy,
                                     device=trial_device,
                                     threads=max(1, int(self.options.cpus_per_trial))),
                {"cpu": self.options.cpus_per_trial, "gpu": gpus},
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher_class(driver),
                    scheduler=scheduler,
                    num_samples=MAX_TRIALS_FACTOR * config.wanted,
                    max_concurrent_trials=max(1, min(fits, config.wanted)),
                    reuse_actors=True,  # no new worker process (and torch import) per trial
                ),
                run_config=tune.RunConfig(
                    name=config.name,
                    storage_path=str(_ray_folder(search)),
                    failure_config=tune.FailureConfig(max_failures=self.options.max_failures),
                    stop=stopper_class(driver),
                    verbose=0,
                ),
            )
            # Tune warns about the per-trial result files switched off above.
            logging.getLogger("ray.tune").setLevel(logging.ERROR)
            try:
                with _tune_environment(), driver.heartbeat, driver.ctrl_c:
                    tuner.fit()
                    if driver.ctrl_c.pressed:
                        raise KeyboardInterrupt
            except BaseException:
                release_session(search.storage)
                driver.interrupt_all("stopped by Ctrl-C")
                raise
            driver.interrupt_all("the Ray run ended before it finished")
        finally:
            ray.shutdown()  # stops the Ray this run started; only disconnects from a cluster

    def _resources(self, resources: dict) -> tuple[float, int]:
        """GPUs per trial and how many trials fit at once, checked against the cluster."""
        have_gpus, have_cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        gpus = self.options.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if have_gpus > 0 else 0.0
        if gpus > have_gpus:
            raise UserError(f"--gpus-per-trial {gpus:g}: the Ray cluster has {have_gpus:g} GPUs")
        if self.options.cpus_per_trial > have_cpus:
            raise UserError(
                f"--cpus-per-trial {self.options.cpus_per_trial:g}: the Ray cluster has "
                f"{have_cpus:g} CPUs"
            )
        fits = int(have_cpus // self.options.cpus_per_trial)
        if gpus > 0:
            fits = min(fits, int(have_gpus // gpus))
        return gpus, fits


def _start_ray(address: str | None) -> None:
    """Start Ray here (dashboard off: its job API has no authentication), or join one."""
    import ray

    if ray.is_initialized():
        return
    try:
        if address is None:
            with _quiet_token_notice(), _loopback_only():
                ray.init(include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
        else:
            _check_listening(address)
            _attach_auth_token()
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = "start a local Ray instance" if address is None else f"join the Ray cluster at {address!r}"
        raise UserError(f"cannot {where}: {str(err).splitlines()[0]}") from None


@contextlib.contextmanager
def _quiet_token_notice() -> Iterator[None]:
    """A Ray that ccsearch starts here has token authentication on, as Ray >= 2.59 starts
    it; Ray says so as a WARNING on every run ("Token authentication is enabled"), which
    is news to nobody and broke ``--quiet``.  Ray's other warnings still show."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def drop(entry: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in entry.getMessage()

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """A Ray that ccsearch starts for a local run must not open the machine to its network.

    Ray binds its servers (GCS, raylet, workers, RuntimeEnvAgent) to the node's address, and
    turns even ``_node_ip_address="127.0.0.1"`` into the machine's outward address unless
    its cluster mode is off, the switch it keeps for Windows and macOS
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read when Ray is imported).  Off while the node
    starts, the node is 127.0.0.1 and every server listens there; the processes it spawns
    inherit the variable.  Restored afterwards, so that joining a cluster later in the same
    process still finds this machine's address.  The socket listing in
    tests/test_ray_backend.py fails loudly if Ray moves this switch.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    before_env, before_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before_env


def _check_listening(address: str) -> None:
    """``ray.init`` waits without end on a HOST:PORT where nothing listens: ask first."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise UserError(f"cannot join the Ray cluster at {address!r}: nothing answers there "
                        f"({err.strerror or err}); start its head with "
                        f"`ray start --head --port={port}`") from None


def _attach_auth_token() -> None:
    """Ray >= 2.59 starts clusters with token authentication when a token exists, but
    ``ray.init(address=...)`` does not send that token unless token mode is on
    (ray-project/ray#64755, "Clients skip auto token auth").  Ray's own switch for it is
    private, hence this one place; the cluster test in tests/test_ray_backend.py fails
    loudly if it moves."""
    from ray._private.authentication import authentication_token_setup as auth

    auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _ray_folder(search: SearchRun) -> Path:
    if search.out is not None:
        return (search.out / "ray").resolve()
    return Path("~/ray_results").expanduser()
