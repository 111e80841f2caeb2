"""Benchmark: the proxy trainer's training throughput against a plain PyTorch loop.

Run ``python benchmarks/bench_trainer.py`` (``--quick`` for a short run, ``--device``,
``--proxy``, ``--model``, ``--condconv 6,7``, ``--epochs``, ``--rounds``).  It compares
``TrainResult.images_per_sec`` of ``train_candidate`` (training steps only; the
evaluation after each epoch is not counted) with a hand-written loop over

* the same model: ``build_model(proxy.adapt(spec, num_classes))``, same seed, fresh per run;
* the same in-memory tensors: the trainer's ``DeviceData`` (uint8 NCHW, on the device),
  built once and shared; the plain loop indexes a batch and normalises it as float;
* the same batch size, number of steps (``epochs x len(train) // batch``, a fresh
  ``randperm`` per epoch), device, and optimizer: SGD, Nesterov momentum, the proxy's
  peak LR held constant, the proxy's weight decay on every parameter (one group);
* on CUDA the same precision as the trainer: autocast (bf16 where supported, else fp16
  with a GradScaler) and channels-last model and input.

Plain loops: ``plain`` (no augmentation: the reference of the ratio), ``plain+aug`` (the
trainer's own ``random_crop_flip`` with the proxy's padding/flip) and, on CPU,
``plain-cl`` (no augmentation, model and input channels-last: the crop's output is
channels-last, so on CPU the trainer's model runs channels-last too).
Every round runs all variants back to back, rotating their order, after one untimed
warm-up of each; the ratios use medians over rounds.  The target is on
``trainer/plain+aug``: the same work and layout, so what is left is the trainer's own
cost.  How to read the output: README.md next to this file.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from ccsearch.arch import build_model  # noqa: E402
from ccsearch.arch.resolve import resolve_spec  # noqa: E402
from ccsearch.errors import UserError  # noqa: E402
from ccsearch.train.augment import random_crop_flip  # noqa: E402
from ccsearch.train.device import mixed_precision  # noqa: E402
from ccsearch.train.proxy import ProxyConfig, get_proxy, load_proxy_data  # noqa: E402
from ccsearch.train.trainer import (  # noqa: E402
    DeviceData,
    train_candidate,
)
from ccsearch.validate import positive_int  # noqa: E402

TARGET = 0.95  # trainer / plain+aug throughput (same augmentation) the trainer should reach


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_avg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except (AttributeError, OSError):
        return "unknown"


def busy_cores(seconds: float = 0.5) -> float:
    """Cores kept busy by other processes while this one sleeps (Linux /proc/stat; else 0)."""
    def snapshot() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        values = [int(v) for v in fields]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    first = snapshot()
    time.sleep(seconds)
    second = snapshot()
    if first is None or second is None or second[0] == first[0]:
        return 0.0
    busy = 1 - (second[1] - first[1]) / (second[0] - first[0])
    return busy * (os.cpu_count() or 1)


def capped(data: DeviceData, batch_size: int, steps: int | None) -> DeviceData:
    """``data`` with at most ``steps`` full batches of training images (views, no copy)."""
    if steps is None or steps * batch_size >= len(data.train_y):
        return data
    n = steps * batch_size
    return replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])


def amp_setup(device: torch.device):
    """What the trainer uses (``ccsearch.train.device.mixed_precision``)."""
    return mixed_precision(device)


def plain_sgd(model: torch.nn.Module, proxy: ProxyConfig) -> torch.optim.SGD:
    """The plain loop's optimizer: one group, decay on every parameter."""
    return torch.optim.SGD(
        model.parameters(),
        lr=proxy.lr,
        momentum=proxy.momentum,
        nesterov=True,
        weight_decay=proxy.weight_decay,
    )


def plain_loop(
    spec,
    proxy: ProxyConfig,
    data: DeviceData,
    device: torch.device,
    seed: int,
    augment: bool,
    channels_last: bool | None = None,
) -> tuple[float, float]:
    """A hand-written training loop; returns (images/s, loss of the last step).

    ``channels_last`` (default: on CUDA, as the trainer) converts model and input batches.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(proxy.adapt(spec, data.num_classes)).to(device)
    cuda = device.type == "cuda"
    if channels_last is None:
        channels_last = cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast, scaler = amp_setup(device)
    optimizer = plain_sgd(model, proxy)
    n = len(data.train_y)
    batch_size = min(proxy.batch_size, n)
    steps = n // batch_size
    model.train()
    sync(device)
    start = time.perf_counter()
    for _ in range(proxy.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            images = data.train_x[index]
            if augment:
                images = random_crop_flip(images, proxy.crop_padding, proxy.flip, generator)
            images = (images.float() - data.mean) / data.std
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(
                    model(images), data.train_y[index], label_smoothing=proxy.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    sync(device)
    seconds = time.perf_counter() - start
    return proxy.epochs * steps * batch_size / seconds, float(loss.detach())


# ---- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--device", choices=("cpu", "cuda"), default=default_device,
                    help="default: %(default)s")
    ap.add_argument("--proxy", default="smoke", help="preset or YAML file (default smoke)")
    ap.add_argument("--data", default=None, help="as the CLI's --data (default: the proxy's)")
    ap.add_argument("--model", default="mnasnet_a1", help="backbone (default mnasnet_a1)")
    ap.add_argument("--condconv", default=None,
                    help="block groups (1..N) that get CondConv, e.g. 6,7, 5-7 or all "
                         "(default none)")
    ap.add_argument("--experts", type=int, default=None, help="experts with --condconv (8)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 2)")
    ap.add_argument("--steps", type=int, default=None,
                    help="cap on steps per epoch (default: the whole training split; quick 8)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 8 steps (< 1 min)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's, one per core)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    rounds = args.rounds or (2 if args.quick else 3)
    steps_cap = args.steps or (8 if args.quick else None)
    device = torch.device(args.device)
    try:
        for flag in ("rounds", "epochs", "steps", "threads"):
            if getattr(args, flag) is not None:
                positive_int(f"--{flag}", getattr(args, flag))
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        proxy = get_proxy(args.proxy, epochs=args.epochs)
        spec = resolve_spec(args.model, args.condconv, args.experts)  # as the CLI's MODEL
        proxy_data = load_proxy_data(proxy, args.data)
    except (UserError, ValueError) as err:
        ap.error(str(err))

    t0 = time.perf_counter()
    full = DeviceData.from_proxy_data(proxy_data, device, proxy.max_val_images)
    batch_size = min(proxy.batch_size, len(full.train_y))
    data = capped(full, batch_size, steps_cap)
    steps = len(data.train_y) // batch_size
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    autocast, _ = amp_setup(device)
    precision = f"autocast {autocast.fast_dtype}" if device.type == "cuda" else "float32"
    print("proxy trainer benchmark: train_candidate vs a plain PyTorch loop")
    print(f"device  {device.type} ({dev_name or platform.machine()}), {precision}")
    print(f"torch   {torch.__version__}  python {platform.python_version()}")
    print(f"threads torch.get_num_threads()={torch.get_num_threads()} "
          f"interop={torch.get_num_interop_threads()} os.cpu_count()={os.cpu_count()}")
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    print(f"env     {' '.join(env) or 'OMP_NUM_THREADS, MKL_NUM_THREADS unset'}")
    experts = {g.experts for g in spec.groups if g.experts}
    cc = (f", CondConv in groups {spec.condconv_groups()} x{'/'.join(map(str, sorted(experts)))}"
          if experts else "")
    print(f"model   {spec.name}{cc}; proxy {proxy.name} (width {proxy.width}, depth "
          f"{proxy.depth}, {proxy.resolution}px)")
    print(f"data    {data.description}: {len(full.train_y)} train / {len(full.val_y)} val")
    print(f"run     {proxy.epochs} epoch(s) x {steps} steps x batch {batch_size} = "
          f"{proxy.epochs * steps * batch_size} images per run; {rounds} rounds; SGD nesterov "
          f"lr {proxy.lr} momentum {proxy.momentum}")
    print(f"augment trainer: random_crop_flip(pad {proxy.crop_padding}, flip {proxy.flip}); "
          "plain: none; plain+aug: the same random_crop_flip"
          + ("; plain-cl: none, model + input channels-last" if device.type == "cpu" else ""))
    print(f"load    {load_avg()} at start")
    busy = busy_cores()
    print(f"busy    {busy:.1f} core(s) used by other processes (sampled for 0.5 s)")
    if busy >= 0.3 and device.type == "cpu" and torch.get_num_threads() > 1:
        print(f"WARNING other processes use {busy:.1f} core(s): with "
              f"{torch.get_num_threads()} OpenMP threads every parallel region waits for a "
              "descheduled sibling; steps can run 10-40x slower. Trust only rounds run in "
              "the same conditions, or use --threads 1.")

    runs: dict[str, Callable[[int], tuple[float, str]]] = {}

    def run_trainer(seed: int, d: DeviceData = data) -> tuple[float, str]:
        r = train_candidate(spec, proxy, d, device, seed=seed)
        if r.status != "ok":
            raise SystemExit(f"trainer run {r.status}: {r.reason}")
        evals = r.wall_time - proxy.epochs * steps * batch_size / r.images_per_sec
        return r.images_per_sec, (f"loss {r.losses[-1]:.3f}, top1 {r.top1:.1f}%, wall "
                                  f"{r.wall_time:.1f} s (build+eval {evals:.1f} s)")

    def run_plain(
        seed: int, augment: bool, d: DeviceData = data, channels_last: bool | None = None
    ) -> tuple[float, str]:
        ips, last = plain_loop(spec, proxy, d, device, seed, augment, channels_last)
        return ips, f"last-step loss {last:.3f}"

    runs["trainer"] = run_trainer
    runs["plain"] = lambda seed: run_plain(seed, False)
    runs["plain+aug"] = lambda seed: run_plain(seed, True)
    if device.type == "cpu":  # on CUDA plain is channels-last already
        runs["plain-cl"] = lambda seed: run_plain(seed, False, channels_last=True)
    names = list(runs)

    # Untimed warm-up (lazy init, allocator, oneDNN / cuDNN primitives) on 2 steps.
    warm = capped(full, batch_size, 2)
    run_trainer(args.seed, warm)
    run_plain(args.seed, False, warm)
    run_plain(args.seed, True, warm)
    if "plain-cl" in runs:
        run_plain(args.seed, False, warm, channels_last=True)

    print(f"\n   {'round':<6} {'variant':<10} {'images/s':>9}  notes")
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            ips, note = runs[name](args.seed + rnd)
            samples[name].append(ips)
            print(f"   {rnd + 1:<6} {name:<10} {ips:9.1f}  {note}")
        ratio = samples["trainer"][-1] / samples["plain"][-1]
        print(f"   {rnd + 1:<6} {'ratio':<10} {ratio:9.3f}  trainer/plain this round")

    med = {name: statistics.median(v) for name, v in samples.items()}
    paired = statistics.median(t / p for t, p in zip(samples["trainer"], samples["plain"],
                                                     strict=True))
    best = {name: max(v) for name, v in samples.items()}
    print("\nmedians (images/s): " + ", ".join(f"{n} {med[n]:.1f}" for n in names))
    print("best    (images/s): " + ", ".join(f"{n} {best[n]:.1f}" for n in names)
          + f"  (trainer/plain {best['trainer'] / best['plain']:.3f})")
    aug = statistics.median(t / p for t, p in zip(samples["trainer"], samples["plain+aug"],
                                                  strict=True))
    ratio = med["trainer"] / med["plain+aug"]
    verdict = "meets" if ratio >= TARGET else "BELOW"
    print(f"trainer/plain+aug {ratio:.3f}  (same augmentation; median of per-round ratios "
          f"{aug:.3f}; target >= {TARGET}: {verdict})")
    print(f"trainer/plain     {med['trainer'] / med['plain']:.3f}  (median of per-round "
          f"ratios {paired:.3f}; no augmentation in plain)")
    print(f"plain+aug/plain   {med['plain+aug'] / med['plain']:.3f}  (what the augmentation "
          "costs a plain loop, its output layout included)")
    if "plain-cl" in med:
        print(f"plain-cl/plain    {med['plain-cl'] / med['plain']:.3f}  (channels-last model "
              "and input, no augmentation)")

    print(f"\ntotal {time.perf_counter() - t0:.0f} s; at the end: load {load_avg()}, "
          f"{busy_cores():.1f} core(s) used by other processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
