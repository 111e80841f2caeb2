"""Benchmark: proxy training on one GPU, alone and shared by several trials.

Run ``python benchmarks/bench_gpu.py`` on a machine with a CUDA GPU (``--quick`` for a
short run; ``--device cpu --quick`` checks the script itself on a machine without one).
Three tables, one run:

1. **Throughput**: ``TrainResult.images_per_sec`` of ``train_candidate`` for the baseline
   (MnasNet-A1) and the paper's CondConv design (8 sigmoid experts in groups 6-7), both as
   the ``mnasnet_a1_325m`` study's references define them, on ``--proxy``; against the
   plain loop of ``bench_trainer.py`` (``plain``: no augmentation, ``plain+aug``: the
   trainer's crop/flip) on the same model, data and device, in the same run, as ratios.
2. **Sharing**: for k in ``--share`` (1, 2, 4), k processes of this script (``--child``)
   train the baseline on the same GPU at once, as k Ray trials with ``--gpus-per-trial
   1/k`` would; each prepares (imports, data on the GPU, a 2-step warm-up), says it is
   ready and waits for the others, so the timed trainings start together.  Total and
   per-trial images/s, each trial's peak ``torch.cuda.max_memory_allocated`` /
   ``max_memory_reserved``, and how much the trainings overlapped.
3. **Memory per trial, per proxy preset**: one fresh process per preset and design
   (``--memory-steps`` steps), its peak reserved memory plus its CUDA context (what the
   device lost beyond the caching allocator), and how many such trials fit this GPU's
   total memory: the smallest ``--gpus-per-trial`` that memory allows.  Presets whose data
   is not on disk (``--preset-data NAME=PATH``) are listed as skipped.

How to read the tables: README.md next to this file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import IO

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout
sys.path.insert(0, str(HERE))  # bench_trainer's plain loop

from bench_trainer import amp_setup, capped, load_avg, plain_loop, sync  # noqa: E402

from ccsearch.arch import ArchSpec  # noqa: E402
from ccsearch.data import EMBEDDED_SOURCES, parse_data_arg  # noqa: E402
from ccsearch.errors import UserError  # noqa: E402
from ccsearch.search.study import load_study_config  # noqa: E402
from ccsearch.train import (  # noqa: E402
    PRESETS,
    DeviceData,
    ProxyConfig,
    get_proxy,
    load_proxy_data,
    train_candidate,
)
from ccsearch.validate import positive_int  # noqa: E402

STUDY = "mnasnet_a1_325m"  # its references: baseline (MnasNet-A1) and paper (6-7, 8 sigmoid)
DESIGNS = ("baseline", "paper")
MARK = "bench_gpu> "  # a child's messages to the parent, one JSON object a line
NO_CUDA = ("no CUDA device here; run it on a GPU machine, or --device cpu to check the "
           "script itself")
MIB = 2**20


def designs() -> dict[str, ArchSpec]:
    """The baseline and the paper's design, exactly as the headline study trains them."""
    refs = load_study_config(STUDY).reference_specs()
    return {name: refs[name] for name in DESIGNS}


def prepare(
    proxy: ProxyConfig, data_arg: str | None, device: torch.device, steps: int | None,
    val_images: int | None,
) -> DeviceData:
    """The proxy's data on the device (all of it, as a trial holds it), with at most
    ``steps`` batches per epoch and ``val_images`` held-out images used (views)."""
    full = DeviceData.from_proxy_data(load_proxy_data(proxy, data_arg), device,
                                      proxy.max_val_images)
    data = capped(full, min(proxy.batch_size, len(full.train_y)), steps)
    if val_images is not None and len(data.val_y) > val_images:
        data = replace(data, val_x=data.val_x[:val_images], val_y=data.val_y[:val_images])
    return data


def steps_of(proxy: ProxyConfig, data: DeviceData) -> tuple[int, int]:
    """(batch size, steps per epoch) as the trainer computes them."""
    batch = min(proxy.batch_size, len(data.train_y))
    return batch, len(data.train_y) // batch


def reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> dict[str, int | None]:
    if device.type != "cuda":
        return {"peak_allocated": None, "peak_reserved": None}
    return {"peak_allocated": torch.cuda.max_memory_allocated(device),
            "peak_reserved": torch.cuda.max_memory_reserved(device)}


def device_used(device: torch.device) -> int | None:
    """Bytes in use on the whole GPU, every process's (``cudaMemGetInfo``)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def mib(value: float | None) -> str:
    return "n/a (cpu)" if value is None else f"{value / MIB:,.0f} MiB"


# ---- child: one trial ------------------------------------------------------------------


def tell(message: dict) -> None:
    print(MARK + json.dumps(message), flush=True)


def child(args: argparse.Namespace) -> int:
    """One trial: prepare, warm up, say ready, wait for ``go`` on stdin (``--wait``),
    train once, report images/s and memory."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads_per_trial)
    proxy = get_proxy(args.proxy, epochs=args.epochs)
    spec = designs()[args.model]
    try:
        data = prepare(proxy, args.data, device, args.steps, args.val_images)
    except UserError as err:
        tell({"status": "skipped", "reason": str(err)})
        return 0
    batch, steps = steps_of(proxy, data)
    if not args.no_warmup:  # untimed: CUDA/cuDNN initialisation, allocator, autotuning
        train_candidate(spec, replace(proxy, epochs=1), capped(data, batch, 2), device,
                        seed=args.seed)
    sync(device)
    reset_peaks(device)
    tell({"status": "ready"})
    if args.wait and sys.stdin.readline().strip() != "go":
        return 1  # the parent went away
    start = time.time()
    result = train_candidate(spec, proxy, data, device, seed=args.seed)
    end = time.time()
    # train_candidate empties the cache when it ends; what the device still holds beyond
    # this process's reserved memory (the data) is its CUDA context (+ other processes').
    tell({
        "status": result.status, "reason": result.reason,
        "images_per_sec": result.images_per_sec, "images": proxy.epochs * steps * batch,
        "start": start, "end": end, "wall": result.wall_time,
        **peaks(device),
        "reserved_end": torch.cuda.memory_reserved(device) if device.type == "cuda" else None,
        "used_end": device_used(device), "params": result.params,
    })
    return 0


# ---- parent: launching children ---------------------------------------------------------


def launch(args: argparse.Namespace, *, model: str, proxy: str, data: str | None,
           epochs: int | None, steps: int | None, val_images: int | None,
           wait: bool) -> tuple[subprocess.Popen, IO[str]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--device", args.device,
           "--proxy", proxy, "--model", model, "--threads-per-trial",
           str(args.threads_per_trial), "--seed", str(args.seed)]
    for flag, value in (("--data", data), ("--epochs", epochs), ("--steps", steps),
                        ("--val-images", val_images)):
        if value is not None:
            cmd += [flag, str(value)]
    if wait:
        cmd.append("--wait")
    if args.quick and args.device == "cpu":  # a check: first-run costs may land in the run
        cmd.append("--no-warmup")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_trial)}
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by run_children)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                            text=True, env=env)
    return proc, err


def read_message(proc: subprocess.Popen) -> dict | None:
    """The child's next message; ``None`` once its stdout closes."""
    for line in proc.stdout:
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return None


def failure(proc: subprocess.Popen, err) -> dict:
    err.seek(0)
    tail = [line for line in err.read().strip().splitlines() if line.strip()][-1:]
    return {"status": "error", "reason": f"exit {proc.returncode}: {' '.join(tail) or 'no message'}"}


def run_children(args: argparse.Namespace, count: int, **options) -> list[dict]:
    """``count`` children at once; their trainings start together once all are ready.
    Waits on their pipes and exits, never on a timer."""
    children = [launch(args, wait=True, **options) for _ in range(count)]
    first = [read_message(proc) for proc, _ in children]  # blocks until each is ready
    for (proc, _), message in zip(children, first, strict=True):
        if message is not None and message["status"] == "ready":
            proc.stdin.write("go\n")
        proc.stdin.close()
    results = []
    for (proc, err), message in zip(children, first, strict=True):
        if message is not None and message["status"] == "ready":
            message = read_message(proc)
        proc.stdout.read()
        proc.wait()
        results.append(message if message is not None else failure(proc, err))
        err.close()
    return results


# ---- the three sections -----------------------------------------------------------------


def section_throughput(args, specs, proxy, device) -> None:
    data = prepare(proxy, args.data, device, args.steps, args.val_images)
    batch, steps = steps_of(proxy, data)
    print(f"\n1. throughput: train_candidate vs bench_trainer's plain loop; proxy {proxy.name}, "
          f"{proxy.epochs} epoch(s) x {steps} steps x batch {batch} per run, median of "
          f"{args.rounds} round(s), variants interleaved")

    def trainer(spec, d, seed):
        r = train_candidate(spec, proxy, d, device, seed=seed)
        if r.status != "ok":
            raise SystemExit(f"bench_gpu: trainer run {r.status}: {r.reason}")
        return r.images_per_sec

    variants = {
        "trainer": trainer,
        "plain": lambda spec, d, seed: plain_loop(spec, proxy, d, device, seed, False)[0],
        "plain+aug": lambda spec, d, seed: plain_loop(spec, proxy, d, device, seed, True)[0],
    }
    names = list(variants)
    warm = capped(data, batch, 2)
    rows = {}
    for design, spec in specs.items():
        for fn in variants.values():
            fn(spec, warm, args.seed)  # untimed warm-up
        ips: dict[str, list[float]] = {n: [] for n in names}
        mem: dict[str, dict] = {}
        for rnd in range(args.rounds):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                sync(device)
                if device.type == "cuda":  # the plain loop leaves its blocks cached
                    gc.collect()
                    torch.cuda.empty_cache()
                reset_peaks(device)
                ips[name].append(variants[name](spec, data, args.seed + rnd))
                mem[name] = peaks(device)
        rows[design] = ({n: statistics.median(v) for n, v in ips.items()}, mem)
    print(f"   {'design':<9} {'variant':<10} {'images/s':>10} {'trainer/this':>12} "
          f"{'peak allocated':>15} {'peak reserved':>15}")
    for design, (med, mem) in rows.items():
        for name in names:
            print(f"   {design:<9} {name:<10} {med[name]:10.1f} "
                  f"{med['trainer'] / med[name]:12.3f} {mib(mem[name]['peak_allocated']):>15} "
                  f"{mib(mem[name]['peak_reserved']):>15}")
    ratio = rows["paper"][0]["trainer"] / rows["baseline"][0]["trainer"]
    print(f"   paper/baseline (trainer images/s): {ratio:.3f}")
    del data, warm
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def section_sharing(args, proxy, device) -> dict | None:
    """Returns the k=1 result (its CUDA context estimate feeds section 3)."""
    print(f"\n2. sharing one {device.type.upper()}: k trials of the baseline at once, proxy "
          f"{proxy.name}, {proxy.epochs} epoch(s) each, {args.threads_per_trial} CPU "
          "thread(s) per trial")
    if device.type == "cpu":
        print("   (on a CPU the trials share its cores, not a GPU: a check that the script "
              "runs, not a figure)")
    print(f"   {'k':>2} {'--gpus-per-trial':>16} {'total img/s':>12} {'vs k=1':>7} "
          f"{'per trial img/s':>19} {'peak alloc/trial':>17} {'peak reserved/trial':>20} "
          f"{'overlap':>8}")
    single = None
    base_total = None
    for k in args.share:
        base_used = device_used(device)
        results = run_children(args, k, model="baseline", proxy=args.proxy, data=args.data,
                               epochs=args.epochs, steps=args.steps,
                               val_images=args.val_images)
        bad = [r for r in results if r["status"] != "ok"]
        if bad:
            print(f"   {k:>2} {1 / k:>16.2f}   {len(bad)} of {k} trial(s) {bad[0]['status']}: "
                  f"{bad[0]['reason']}")
            continue
        ips = [r["images_per_sec"] for r in results]
        total = sum(ips)
        base_total = base_total or (total if k == 1 else None)
        vs = f"{total / base_total:.2f}x" if base_total else "-"
        window = max(r["end"] for r in results) - min(r["start"] for r in results)
        common = min(r["end"] for r in results) - max(r["start"] for r in results)
        overlap = max(0.0, common) / window if window > 0 else 1.0
        alloc = [r["peak_allocated"] for r in results]
        reserved = [r["peak_reserved"] for r in results]
        per = (f"{statistics.fmean(ips):.0f} ({min(ips):.0f}-{max(ips):.0f})" if k > 1
               else f"{ips[0]:.0f}")
        print(f"   {k:>2} {1 / k:>16.2f} {total:12.1f} {vs:>7} {per:>19} "
              f"{mib(max(alloc) if alloc[0] is not None else None):>17} "
              f"{mib(max(reserved) if reserved[0] is not None else None):>20} "
              f"{100 * overlap:7.0f}%")
        if k == 1:
            single = {**results[0], "base_used": base_used}
    context = context_bytes(single)
    if single is not None and context is not None:
        print(f"   CUDA context of one trial (outside the caching allocator): ~{mib(context)}; "
              f"a trial's footprint is its peak reserved + this")
    return single


def context_bytes(single: dict | None) -> int | None:
    """What a k=1 child held on the device beyond its caching allocator at its end."""
    if not single or single.get("used_end") is None or single.get("base_used") is None:
        return None
    return max(0, single["used_end"] - single["base_used"] - single["reserved_end"])


def section_memory(args, device, single_context: int | None) -> None:
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    print(f"\n3. memory per trial, per proxy preset: one fresh process per row, "
          f"{args.memory_steps} training step(s) + evaluation; GPU total {mib(total)}")
    print(f"   {'preset':<18} {'design':<9} {'batch':>5} {'px':>4} {'peak alloc':>12} "
          f"{'peak reserved':>14} {'+ context':>10} {'trials that fit':>16} "
          f"{'min --gpus-per-trial':>21}")
    for name in args.presets:
        proxy = get_proxy(name, epochs=1)
        data_arg = args.preset_data.get(name)
        try:
            source, root = parse_data_arg(data_arg, default=proxy.data)
        except UserError as err:  # a PATH that does not exist, or an unknown SOURCE=
            print(f"   {name:<18} skipped: "
                  + (str(err) if "=" in data_arg else f"data not found at {data_arg}"))
            continue
        if root is None and source not in EMBEDDED_SOURCES:
            print(f"   {name:<18} skipped: data not found (reads {source}; none on disk was "
                  f"named: --preset-data {name}=PATH)")
            continue
        if root is not None and not root.exists():
            print(f"   {name:<18} skipped: data not found at {root}")
            continue
        for design in DESIGNS:
            base_used = device_used(device)
            (r,) = run_children(args, 1, model=design, proxy=name, data=data_arg, epochs=1,
                                steps=args.memory_steps, val_images=args.val_images)
            if r["status"] == "skipped":
                print(f"   {name:<18} skipped: {r['reason']}")
                break
            if r["status"] != "ok":
                print(f"   {name:<18} {design:<9} {r['status']}: {r['reason']}")
                continue
            context = context_bytes({**r, "base_used": base_used})
            if context is None:
                context = single_context
            cells = ["n/a (cpu)"] * 2
            if r["peak_reserved"] is not None and context is not None and total:
                footprint = r["peak_reserved"] + context
                fits = int(total // footprint)
                cells = [f"{fits}", f"{1 / fits:.3f}" if fits else "does not fit"]
            print(f"   {name:<18} {design:<9} {proxy.batch_size:>5} {proxy.resolution:>4} "
                  f"{mib(r['peak_allocated']):>12} {mib(r['peak_reserved']):>14} "
                  f"{mib(context) if device.type == 'cuda' else 'n/a (cpu)':>10} "
                  f"{cells[0]:>16} {cells[1]:>21}")
    if device.type == "cuda":
        print("   'fit' counts memory only (total // (peak reserved + context)), with nothing "
              "else on the GPU; whether k trials also run faster than one is table 2's question")


# ---- main ------------------------------------------------------------------------------


def csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 1,2,4") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers like 1,2,4")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="default cuda; cpu only checks that the script runs")
    ap.add_argument("--proxy", default="smoke",
                    help="preset or YAML file of tables 1 and 2 (default smoke)")
    ap.add_argument("--data", default=None, help="as the CLI's --data, for --proxy")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per run in tables 1 and 2 (default: the proxy's; quick 1)")
    ap.add_argument("--presets", default=",".join(PRESETS),
                    help="presets of table 3, comma-separated (default all)")
    ap.add_argument("--preset-data", action="append", default=[], metavar="PRESET=DATA",
                    help="where a preset's data is (DATA as the CLI's --data); repeatable")
    ap.add_argument("--share", type=csv_ints, default=None,
                    help="trials sharing the device in table 2 (default 1,2,4; 1,2 with "
                         "--device cpu --quick, where every trial process costs ~10 CPU-s)")
    ap.add_argument("--sections", type=csv_ints, default=[1, 2, 3],
                    help="tables to run (default 1,2,3)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of table 1 (default 3, quick 1)")
    ap.add_argument("--steps", type=int, default=None,
                    help="cap on steps per epoch in tables 1 and 2 (default none; quick 4)")
    ap.add_argument("--memory-steps", type=int, default=None,
                    help="training steps per row of table 3 (default 20, quick 2)")
    ap.add_argument("--val-images", type=int, default=None,
                    help="cap on held-out images evaluated (default the proxy's; quick 128)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of this process, table 1 (default torch's on "
                         "cuda, 1 on cpu: a busy core stalls every OpenMP region)")
    ap.add_argument("--threads-per-trial", type=int, default=1,
                    help="torch threads of each trial process, tables 2-3 (default 1, as "
                         "Ray's --cpus-per-trial 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="1 epoch of 4 steps, 1 round, 2 memory steps: checks the script")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=DESIGNS, default="baseline", help=argparse.SUPPRESS)
    ap.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-warmup", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench_gpu: {NO_CUDA}", file=sys.stderr)
        return 2
    if args.child:
        return child(args)
    if args.quick:
        args.epochs = args.epochs or 1
        args.steps = args.steps or 4
        args.val_images = args.val_images or 128
    if args.share is None:
        args.share = [1, 2] if args.quick and args.device == "cpu" else [1, 2, 4]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.memory_steps = args.memory_steps or (2 if args.quick else 20)
    try:
        for flag in ("epochs", "rounds", "steps", "memory_steps", "val_images", "threads",
                     "threads_per_trial"):
            positive_int(f"--{flag.replace('_', '-')}", getattr(args, flag), optional=True)
        args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
        for name in args.presets:
            get_proxy(name)  # an unknown preset: one line, before anything runs
        preset_data = {}
        for item in args.preset_data:
            name, sep, where = item.partition("=")
            if not sep or not where:
                raise UserError(f"--preset-data {item!r}: use PRESET=DATA")
            get_proxy(name)
            preset_data[name] = where
        args.preset_data = preset_data
        if args.threads is None and args.device == "cpu":
            args.threads = 1
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        proxy = get_proxy(args.proxy, epochs=args.epochs)
        specs = designs()
    except UserError as err:
        ap.error(str(err))

    device = torch.device(args.device)
    t0 = time.perf_counter()
    print("GPU benchmark: proxy training alone and shared by trials")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        autocast, _ = amp_setup(device)
        print(f"device  {props.name}, {props.total_memory / 2**30:.1f} GiB, "
              f"{props.multi_processor_count} SMs, compute {props.major}.{props.minor}; "
              f"autocast {autocast.fast_dtype}, channels-last")
        print(f"torch   {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version()}, python {platform.python_version()}")
    else:
        print(f"device  cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} "
              "cores), float32: NOT a GPU; this run only checks the script")
        print(f"torch   {torch.__version__}, CUDA {torch.version.cuda or 'none'}, python "
              f"{platform.python_version()}")
    print(f"designs baseline = {specs['baseline'].name}, paper = {specs['paper'].name} "
          f"(CondConv in groups {specs['paper'].condconv_groups()}), as study {STUDY} "
          "trains them")
    print(f"cpu     {os.cpu_count()} cores, load {load_avg()}; this process "
          f"{torch.get_num_threads()} thread(s), each trial {args.threads_per_trial}")
    if args.quick:
        print("quick   1 epoch x 4 steps per run, 1 round: a check, not a measurement")

    single = None
    for number in sorted(set(args.sections)):
        started = time.perf_counter()
        if number == 1:
            section_throughput(args, specs, proxy, device)
        elif number == 2:
            single = section_sharing(args, proxy, device)
        elif number == 3:
            section_memory(args, device, context_bytes(single))
        else:
            continue
        print(f"   ({time.perf_counter() - started:.0f} s)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load {load_avg()} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
