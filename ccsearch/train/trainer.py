"""``train_candidate``: one short proxy training run of one architecture.

The whole proxy data set sits in memory as uint8 (on the GPU when there is one);
batches are augmented on the device, so an epoch never decodes an image.  Every
ending is a result, never an exception that would kill a search: ``ok``,
``pruned`` (the epoch callback said stop), ``diverged`` (non-finite loss) or
``failed`` (e.g. CUDA out of memory), each with its reason.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ccsearch.arch import ArchSpec, build_model, spec_digest
from ccsearch.arch.blocks import Block
from ccsearch.checkpoint import Checkpoint, load_weights, save_checkpoint
from ccsearch.data import ProxyData
from ccsearch.errors import UserError
from ccsearch.layers import Routing
from ccsearch.provenance import versions
from ccsearch.train import device as placement
from ccsearch.train.augment import Draws, crop_flip
from ccsearch.train.device import DeviceData, device_data, resolve_device
from ccsearch.train.proxy import ProxyConfig
from ccsearch.train.routing_stats import RoutingRecorder, routing_statistics

# Called after each epoch with (epoch 1..N, validation top-1 in %); True stops the run.
EpochCallback = Callable[[int, float], bool]


@dataclass
class TrainResult:
    status: str  # ok | pruned | diverged | failed
    top1: float | None  # validation top-1 (%) after the last epoch run
    curve: list[float] = field(default_factory=list)  # validation top-1 per epoch
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    epochs: int = 0
    wall_time: float = 0.0  # seconds, whole run
    images_per_sec: float = 0.0  # training throughput (forward + backward + step)
    device: str = "cpu"
    reason: str = ""
    proxy: str = ""
    data: str = ""  # description of the data, says "not ImageNet" for the smoke proxy
    smoke_test: bool = False
    seed: int = 0
    params: int = 0  # parameters of the proxy model actually trained
    # what else the top-1 depends on: same values, same top-1 (CPU results change with
    # the thread count; GPU kernels may not be bitwise deterministic)
    data_checksum: str = ""
    threads: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    # one entry per training seed (``train_repeated``); top1 and curve are then their mean
    seeds: list[int] = field(default_factory=list)
    seed_top1: list[float] = field(default_factory=list)
    seed_curves: list[list[float]] = field(default_factory=list)
    top1_std: float | None = None
    routing_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # routing_stats.py
    bitwise_reproducible: bool = True  # False on GPUs (cuDNN picks kernels by timing them)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_recipe(model: nn.Module, proxy: ProxyConfig) -> None:
    """The proxy's batch norm momentum and eps, drop-connect (TF's rule: block i of n drops
    its residual branch with rate ``drop_connect * i / n``) and the residual branches'
    last batch norm starting at zero or at one."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for i, block in enumerate(blocks):
        block.drop_connect = proxy.drop_connect * i / len(blocks)
        if block.has_skip and not proxy.zero_init_last_bn:
            nn.init.ones_(block.last_bn().weight)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum, module.eps = proxy.bn_momentum, proxy.bn_eps


def train_candidate(
    spec: ArchSpec,
    proxy: ProxyConfig,
    data: ProxyData | DeviceData,
    device: str | torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    seed: int = 0,
    save_to: Path | None = None,
    resume: Checkpoint | None = None,
) -> TrainResult:
    """Train ``spec`` (adapted to the proxy) and return its validation accuracy curve.

    ``save_to``: write a checkpoint there when training ends (``ccsearch train --save``);
    ``resume``: go on from a checkpoint of the same model and proxy for its remaining
    epochs (the LR schedule and data order continue where they stopped; a larger
    ``epochs`` continues further)."""
    start = time.perf_counter()
    device = resolve_device(device)
    result = TrainResult(
        status="ok",
        top1=None,
        device=str(device),
        proxy=proxy.name,
        seed=seed,
        threads=torch.get_num_threads(),
        versions=versions(),
        bitwise_reproducible=placement.bitwise_reproducible(device),
    )
    stopped: BaseException | None = None
    try:
        placement.prepare(device)
        data = device_data(data, device, proxy.max_val_images)  # uploads can run out too
        result.data, result.smoke_test = data.description, data.smoke_test
        result.data_checksum = data.checksum
        _train(spec, proxy, data, device, on_epoch, seed, result, save_to, resume)
    except Exception as err:
        if not placement.is_out_of_memory(err):
            raise
        result.status, result.reason = "failed", f"out of memory: {str(err).splitlines()[0]}"
    except BaseException as err:  # SystemExit from Ray's tune.report (ASHA stopped it), Ctrl-C
        stopped = err.with_traceback(None)  # its frames would keep the model alive
    placement.release_memory(device)  # after the frames holding the model are gone
    if stopped is not None:
        raise stopped
    result.wall_time = time.perf_counter() - start
    return result


def train_repeated(
    train: Callable[[int, EpochCallback], TrainResult],
    seeds: Sequence[int],
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """``train(seed, on_epoch)`` once per seed, in turn, as one result: the mean curve and
    top-1, their standard deviation and every seed's curve.

    ``on_epoch`` sees, at each epoch, the mean over the seeds trained so far, so a pruner
    compares mean curves; a stop, a divergence or a failure ends the remaining seeds."""
    runs: list[TrainResult] = []
    for seed in seeds:
        before = [r.curve for r in runs]

        def mean_so_far(epoch: int, top1: float, before=before) -> bool:
            values = [c[epoch - 1] for c in before if len(c) >= epoch] + [top1]
            return on_epoch(epoch, sum(values) / len(values)) if on_epoch else False

        runs.append(train(seed, mean_so_far))
        if runs[-1].status != "ok":
            break
    return _combine(runs)


def _combine(runs: list[TrainResult]) -> TrainResult:
    last = runs[-1]
    combined = TrainResult(**{**runs[0].to_dict(), "status": last.status, "reason": last.reason})
    length = max(len(r.curve) for r in runs)

    def mean_per_epoch(lists: list[list[float]]) -> list[float]:
        columns = [[x[e] for x in lists if len(x) > e] for e in range(length)]
        return [sum(c) / len(c) for c in columns if c]

    combined.curve = mean_per_epoch([r.curve for r in runs])
    combined.losses = mean_per_epoch([r.losses for r in runs])
    combined.epochs = length
    combined.seeds = [r.seed for r in runs]
    combined.seed_curves = [list(r.curve) for r in runs]
    combined.seed_top1 = [r.top1 for r in runs if r.top1 is not None]
    ended = last.status == "ok" and len(combined.seed_top1) == len(runs)
    combined.top1 = (sum(combined.seed_top1) / len(runs)) if ended else (
        combined.curve[-1] if combined.curve else None)
    if ended and len(runs) > 1:
        combined.top1_std = statistics.stdev(combined.seed_top1)
    combined.wall_time = sum(r.wall_time for r in runs)
    combined.images_per_sec = statistics.fmean(r.images_per_sec for r in runs)
    return combined


def _train(
    spec: ArchSpec,
    proxy: ProxyConfig,
    data: DeviceData,
    device: torch.device,
    on_epoch: EpochCallback | None,
    seed: int,
    result: TrainResult,
    save_to: Path | None = None,
    resume: Checkpoint | None = None,
) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    trained = proxy.adapt(spec, data.num_classes)
    model = build_model(trained)
    apply_recipe(model, proxy)
    first_epoch = 1
    if resume is not None:
        first_epoch = _resume(model, trained, proxy, resume, generator, result)
    model = model.to(device)
    result.params = sum(p.numel() for p in model.parameters())
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    autocast, scaler = placement.mixed_precision(device)

    n = len(data.train_y)
    batch_size = min(proxy.batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: BN needs > 1 example
    optimizer = _optimizer(model, proxy)
    if resume is not None and resume.optimizer_state is not None:
        optimizer.load_state_dict(resume.optimizer_state)
    schedule = _lr_schedule(proxy, steps_per_epoch)

    def keep() -> None:  # after every epoch: a stopped run resumes from its last one
        save_checkpoint(save_to, model, Checkpoint(
            spec=trained, candidate=spec, proxy=proxy.to_dict(), data=data.description,
            seed=seed, epochs_done=result.epochs, curve=list(result.curve),
            losses=list(result.losses), optimizer_state=optimizer.state_dict(),
            generator_state=generator.get_state()))

    recorder = RoutingRecorder(model)
    _epochs(model, proxy, data, device, on_epoch, result, generator, optimizer, schedule,
            range(first_epoch, proxy.epochs + 1), batch_size, steps_per_epoch, autocast, scaler,
            keep if save_to is not None else None, recorder)
    if result.status in ("ok", "pruned"):  # trained: is its routing sparse?
        result.routing_stats = recorder.statistics() if recorder.weights else (
            routing_statistics(model, data.val_x, data.normalise, max(256, batch_size),
                               autocast))  # a resumed checkpoint with no epoch left


def _resume(model, trained: ArchSpec, proxy: ProxyConfig, resume: Checkpoint, generator,
            result: TrainResult) -> int:
    """Load a checkpoint of this very model and proxy; the first epoch still to run."""
    if resume.spec != trained:
        raise UserError(
            f"checkpoint {resume.folder} trained {resume.spec.name} "
            f"({spec_digest(resume.spec)}), not this model ({spec_digest(trained)})"
        )
    # More epochs may follow (the cosine schedule then stretches); nothing else may change.
    changed = [k for k in proxy.changed_fields(resume.proxy) if k != "epochs"]
    if changed:
        raise UserError(f"checkpoint {resume.folder} used another proxy: {', '.join(changed)} differ")
    load_weights(model, resume.folder / "model.safetensors")
    if resume.generator_state is not None:
        generator.set_state(resume.generator_state)
    result.curve, result.losses = list(resume.curve), list(resume.losses)
    result.epochs = resume.epochs_done
    result.top1 = resume.curve[-1] if resume.curve else None
    return resume.epochs_done + 1


def _epochs(model, proxy, data, device, on_epoch, result, generator, optimizer, schedule,
            epochs, batch_size, steps_per_epoch, autocast, scaler, keep=None,
            recorder: RoutingRecorder | None = None) -> None:
    cuda = device.type == "cuda"
    n = len(data.train_y)
    routers = [m for m in model.modules() if isinstance(m, Routing)] if proxy.routing_warmup else []
    routing_blend = _routing_blend(proxy, steps_per_epoch)
    train_seconds = 0.0
    images_seen = 0
    for epoch in epochs:
        model.train()
        epoch_start = time.perf_counter()
        # the epoch's random draws in one copy each: nothing in a step waits for the device
        order = torch.randperm(n, generator=generator).to(device)
        draws = Draws.draw(steps_per_epoch * batch_size, proxy.crop_padding, proxy.flip,
                           generator, device)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = group["lr_factor"] * proxy.lr * schedule(
                    (epoch - 1) * steps_per_epoch + step)
            if routers:
                blend = routing_blend((epoch - 1) * steps_per_epoch + step)
                for router in routers:
                    router.blend = blend
            batch = slice(step * batch_size, (step + 1) * batch_size)
            index = order[batch]
            images = crop_flip(data.train_x[index], proxy.crop_padding, draws[batch])
            images = data.normalise(images)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(
                    model(images), data.train_y[index], label_smoothing=proxy.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if proxy.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), proxy.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach().float()
        mean_loss = float(loss_sum) / max(1, steps_per_epoch)  # one sync per epoch
        if cuda:
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - epoch_start
        images_seen += steps_per_epoch * batch_size
        result.images_per_sec = images_seen / train_seconds if train_seconds else 0.0
        result.losses.append(mean_loss)
        result.epochs = epoch
        if not math.isfinite(mean_loss):
            result.status = "diverged"
            result.reason = f"non-finite training loss in epoch {epoch}"
            return
        top1 = evaluate(model, data, batch_size=max(256, batch_size), autocast=autocast,
                        recorder=recorder)
        result.curve.append(top1)
        result.top1 = top1
        if keep is not None:
            keep()
        if on_epoch is not None and on_epoch(epoch, top1):
            result.status, result.reason = "pruned", f"stopped by the pruner after epoch {epoch}"
            return


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 256, autocast=None,
             recorder: RoutingRecorder | None = None) -> float:
    """Top-1 accuracy (%) on the held-out split; ``recorder`` keeps this pass's routing."""
    model.eval()
    if recorder is not None:
        recorder.start()
    correct = torch.zeros((), dtype=torch.long, device=data.val_y.device)
    cuda = data.val_x.device.type == "cuda"
    for start in range(0, len(data.val_y), batch_size):
        images = data.normalise(data.val_x[start : start + batch_size])
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast or nullcontext():
            logits = model(images)
        correct += (logits.argmax(1) == data.val_y[start : start + batch_size]).sum()
        if recorder is not None:
            recorder.record()
    return 100.0 * int(correct) / max(1, len(data.val_y))


def _optimizer(model: nn.Module, proxy: ProxyConfig) -> torch.optim.Optimizer:
    """No weight decay on batch norm and biases (1-D parameters); the routing functions'
    parameters at ``routing_lr`` times the LR (``lr_factor`` of each group)."""
    routing = {id(p) for m in model.modules() if isinstance(m, Routing) for p in m.parameters()}
    groups = []
    for factor, in_routing in ((1.0, False), (proxy.routing_lr, True)):
        members = [p for p in model.parameters() if (id(p) in routing) == in_routing]
        for decay, weight_decay in ((True, proxy.weight_decay), (False, 0.0)):
            params = [p for p in members if (p.ndim > 1) == decay]
            if params:
                groups.append({"params": params, "weight_decay": weight_decay,
                               "lr": factor * proxy.lr, "lr_factor": factor})
    if proxy.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=proxy.lr, alpha=0.9, eps=1e-3, momentum=proxy.momentum
        )
    # Fused: one kernel updates every parameter; the default per-parameter loop took 15%
    # of a smoke step of a CondConv-heavy layout on a CPU (3.5 ms fused against 11.7).
    return torch.optim.SGD(
        groups, lr=proxy.lr, momentum=proxy.momentum, nesterov=True, fused=True
    )


def _routing_blend(proxy: ProxyConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """``Routing.blend`` per step: a linear ramp to 1 over ``routing_warmup`` of the
    training, then 1; the last step always trains the candidate itself."""
    total = max(1, proxy.epochs * steps_per_epoch)
    ramp = max(1, round(proxy.routing_warmup * total))
    return lambda step: min(1.0, (step + 1) / ramp)


def _lr_schedule(proxy: ProxyConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero; a factor of the peak LR per step."""
    total = max(1, proxy.epochs * steps_per_epoch)
    warmup = min(total - 1, int(proxy.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor
