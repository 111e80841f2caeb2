"""The ``ccsearch`` command line: a thin layer over the public API.

Every mistake a user can cause ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from collections.abc import Sequence

from ccsearch.arch import BACKBONES, ArchSpec, get_backbone
from ccsearch.arch.backbones import PUBLISHED
from ccsearch.arch.resolve import resolve_spec
from ccsearch.errors import UserError
from ccsearch.layers import ROUTING_ACTIVATIONS
from ccsearch.madds import CONVENTIONS, MaddsReport, count_madds, format_madds
from ccsearch.validate import positive_int

CONVENTION_NOTES = {
    "paper": "paper convention: conv + linear + CondConv kernel mixing + routing FC; "
    "batch norm, activations and pooling not counted",
    "fvcore": "fvcore convention: fvcore's default ops, batch norm and adaptive pooling included",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (exit 2), without the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_params(n: int) -> str:
    """2_412_345 -> '2.41M', 470_032 -> '470.0K', 432 -> '432'."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}K" if n >= 1e3 else str(int(n))


def check_device(device: str, available: bool = True) -> str:
    """``--device`` as given, if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` and (with
    ``available``) this machine has it; else a ``UserError``."""
    kind, colon, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (colon and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"--device {device}: use auto, cpu, cuda or cuda:N")
    if available and kind == "cuda":
        count = _cuda_count()
        if not count:
            raise UserError(f"--device {device}: no CUDA device is available here "
                            "(use --device cpu, or auto)")
        if colon and int(index) >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), "
                            f"cuda:0..cuda:{count - 1}")
    return device


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---- ccsearch madds ----------------------------------------------------------------------


def _print_madds(spec: ArchSpec, report: MaddsReport) -> None:
    cc = spec.condconv_groups()
    title = f"{spec.name} @ {report.resolution}x{report.resolution}, {spec.num_classes} classes"
    if cc:
        experts = sorted({spec.groups[g - 1].experts for g in cc})
        routings = sorted({spec.groups[g - 1].routing for g in cc})
        title += (
            f", CondConv in groups {','.join(map(str, cc))} "
            f"({'/'.join(map(str, experts))} experts, {'/'.join(routings)} routing)"
        )
    print(title)
    print(
        f"MADDs:  {format_madds(report.madds)}  ({report.madds:,})  [{CONVENTION_NOTES[report.convention]}]"
    )
    if cc:
        print(
            f"        of which CondConv kernel mixing {format_madds(report.condconv_mixing)}, "
            f"routing FC {format_madds(report.routing)}"
        )
    if report.skipped_ops:
        skipped = ", ".join(f"{op} x{n}" for op, n in sorted(report.skipped_ops.items()))
        print(f"        ops fvcore counts as zero: {skipped}")
    print(f"params: {format_params(report.params)} ({report.params:,})")
    print()
    print(f"{'group':>5}  {'block':<42} {'MADDs':>9} {'params':>9}")
    print(f"{'stem':>5}  {'':<42} {format_madds(report.stem):>9}")
    for g in report.groups:
        print(f"{g.index:>5}  {g.block:<42} {format_madds(g.madds):>9} "
              f"{format_params(g.params):>9}")
    print(f"{'head':>5}  {'':<42} {format_madds(report.head):>9}")


def cmd_madds(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args, args.model)
    report = count_madds(spec, resolution=args.resolution, convention=args.convention)
    moe = None
    if args.moe:
        from ccsearch.madds import moe_equivalent_madds

        moe = moe_equivalent_madds(spec, resolution=args.resolution, convention=args.convention)
    if args.json:
        extra = {} if moe is None else {"moe_equivalent_madds": moe}
        print(json.dumps({**report.to_dict(), **extra, "spec": spec.to_dict()}, indent=2))
    else:
        _print_madds(spec, report)
        if moe is not None:
            print(f"mixture of experts (each CondConv layer as E separate convs): "
                  f"{format_madds(moe)} ({moe:,}); CondConv is {report.madds / moe:.1%} of it")
    return 0


# ---- ccsearch backbones ------------------------------------------------------------------


def cmd_backbones(args: argparse.Namespace) -> int:
    specs = {name: get_backbone(name) for name in BACKBONES}
    if args.json:
        out = {
            name: {"published_madds": PUBLISHED[name], "groups": [g.to_string() for g in s.groups]}
            for name, s in specs.items()
        }
        print(json.dumps(out, indent=2))
        return 0
    for name, spec in specs.items():
        channels = ", ".join(str(g.channels) for g in spec.groups)
        print(
            f"{name}: {len(spec.groups)} block groups ({channels} channels), "
            f"published {format_madds(PUBLISHED[name])} MADDs at 224px"
        )
        for i, group in enumerate(spec.groups, start=1):
            print(f"  {i:>2}  {group.to_string()}")
    return 0


# ---- ccsearch train ----------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ccsearch.train import (
        get_proxy,
        load_proxy_data,
        resolve_device,
        train_candidate,
        train_repeated,
    )

    check_device(args.device)
    if args.threads is not None:
        positive_int("--threads", args.threads)
        torch.set_num_threads(args.threads)
    if args.repeats is not None:
        positive_int("--repeats", args.repeats)
    trial = _trial_to_reproduce(args) if args.from_trial else None
    if trial is not None:
        spec, proxy, data_arg, seeds = trial.spec, trial.proxy, args.data or trial.data, trial.seeds
    else:
        if args.model is None:
            raise UserError("ccsearch train needs MODEL (a backbone or spec .json), or --from-trial RUN N")
        spec = _spec_from_args(args, args.model)
        proxy = get_proxy(args.proxy or "smoke", epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr)
        seed = args.seed or 0
        data_arg, seeds = args.data, [seed + r for r in range(args.repeats or 1)]
    if args.resume_from and len(seeds) > 1:
        raise UserError("--resume-from continues one training: it does not take --repeats")
    data = load_proxy_data(proxy, data_arg)
    if trial is not None:
        from ccsearch.search.reproduce import differences

        device = resolve_device(args.device).type
        for line in differences(trial.record, data.checksum(), torch.get_num_threads(), device):
            print(f"warning: {line}: the top-1 may differ from the record", file=sys.stderr)
    madds = count_madds(spec)
    reduced = [f"{k} {v:g}x" for k, v in (("width", proxy.width), ("depth", proxy.depth)) if v != 1]
    if not args.json:
        print(
            f"training {spec.name} ({format_madds(madds.madds)} MADDs at 224px, paper convention)"
        )
        copy = f", on a reduced copy of the model ({', '.join(reduced)})" if reduced else ""
        print(
            f"proxy {proxy.name}: {plural(proxy.epochs, 'epoch')} at {proxy.resolution}px on "
            f"{data.description}{copy}"
        )

    def report(epoch: int, top1: float) -> bool:
        if not args.json:
            print(f"  epoch {epoch}/{proxy.epochs}: val top-1 {top1:.1f}%", flush=True)
        return False

    resume = None
    if args.resume_from:
        from ccsearch.checkpoint import read_checkpoint

        resume = read_checkpoint(args.resume_from)

    def train_one(seed: int, on_epoch) -> object:
        if len(seeds) > 1 and not args.json:
            print(f" seed {seed}:")
        return train_candidate(spec, proxy, data, device=args.device, on_epoch=report,
                               seed=seed, save_to=args.save, resume=resume)

    result = train_repeated(train_one, seeds)
    if args.json:
        out = result.to_dict()
        # The trained copy (proxy width, depth and classes) next to the full model's counts.
        out["proxy_params"] = out.pop("params")
        out.update(params=madds.params, madds=madds.madds, convention=madds.convention)
        print(
            json.dumps({**out, "spec": spec.to_dict(), "proxy_config": proxy.to_dict()}, indent=2)
        )
    else:
        top1 = "n/a" if result.top1 is None else f"{result.top1:.1f}%"
        if result.top1_std is not None:
            top1 += f" ± {result.top1_std:.1f} (mean ± std of {len(result.seeds)} seeds)"
        print(
            f"{result.status}: top-1 {top1} after {plural(result.epochs, 'epoch')}, "
            f"{result.wall_time:.1f}s, {result.images_per_sec:.0f} images/s on {result.device}"
        )
        if result.reason:
            print(f"reason: {result.reason}")
        trained = "the reduced copy" if reduced else "the model"
        print(f"params: {format_params(result.params)} in {trained} trained "
              f"({data.num_classes} classes), {format_params(madds.params)} in the full model "
              f"({spec.num_classes} classes)")
        if trial is not None:
            _compare_with_record(trial.record, result)
        if result.smoke_test:
            print(f"note: {data.source} is a smoke-test proxy, not ImageNet; its accuracy says "
                  "nothing about ImageNet")
        if args.save:
            print(f"checkpoint: {args.save}  (continue with --resume-from {args.save})")
    return 0 if result.status == "ok" else 1


def _trial_to_reproduce(args: argparse.Namespace):
    from pathlib import Path

    import torch

    from ccsearch.search import run
    from ccsearch.search.reproduce import trial_inputs

    folder, number = args.from_trial
    if (args.model is not None or args.condconv or args.experts or args.routing
            or args.calibrated_routing or args.width != 1.0):
        raise UserError("--from-trial takes the trial's architecture: drop MODEL and the "
                        "--condconv/--experts/--routing/--calibrated-routing/--width options")
    for name in ("proxy", "epochs", "batch_size", "lr"):
        if getattr(args, name) is not None:
            raise UserError(f"--from-trial takes the study's proxy: drop --{name.replace('_', '-')}")
    if args.seed is not None or args.repeats is not None:
        raise UserError("--from-trial takes the trial's seeds: drop --seed and --repeats")
    if not number.isdigit():
        raise UserError(f"--from-trial {folder} {number!r}: N must be a trial number")
    _quiet_optuna()
    inputs = trial_inputs(run.open_folder(Path(folder)), int(number))
    if args.threads is None and inputs.threads:
        torch.set_num_threads(inputs.threads)  # the thread count changes CPU results
    return inputs


def _compare_with_record(record, result) -> None:
    """Say whether the retraining gave the recorded top-1 (the whole curve, in fact; a
    pruned trial's curve is the start of the full one)."""
    if list(result.curve[: len(record.curve)]) == list(record.curve):
        print(f"reproduced trial {record.number} exactly: the recorded curve was "
              f"{', '.join(f'{t:.2f}' for t in record.curve)}")
    else:
        shown = "n/a" if record.top1 is None else f"{record.top1:.2f}%"
        print(f"differs from trial {record.number}: it recorded {shown} "
              f"(curve {', '.join(f'{t:.2f}' for t in record.curve)})")


# ---- ccsearch prepare-data ---------------------------------------------------------------


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from ccsearch.data import prepare_imagenet_cache
    from ccsearch.data.cache import is_cache_dir

    if is_cache_dir(args.out) and not args.force:
        raise UserError(f"{args.out} already holds a cache: pass --force to replace it, "
                        "or -o another folder")
    out = prepare_imagenet_cache(
        args.root,
        args.out,
        classes=args.classes,
        images_per_class=args.images_per_class,
        resolution=args.resolution,
        seed=args.seed,
        workers=args.workers,
        progress=not args.quiet,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    counts, skipped = manifest["counts"], manifest["skipped"]["count"]
    resolution, classes = manifest["resolution"], len(manifest["class_names"])
    print(
        f"cache written to {out}: {counts['train']} train and {counts['val']} val images of "
        f"{classes} classes at {resolution}px; {skipped} unreadable images skipped"
    )
    print(_cache_hint(out, resolution, classes))
    return 0


def _cache_hint(out, resolution: int, classes: int) -> str:
    """How to train on a cache: a preset that fits it, else the proxy YAML to write."""
    from ccsearch.train import PRESETS

    for name, proxy in PRESETS.items():
        fits = proxy.resolution <= resolution and (proxy.classes or 0) <= classes
        if proxy.data == "imagenet" and fits:
            return f"use it with: ccsearch train mnasnet_a1 --proxy {name} --data {out}"
    return (f"no proxy preset fits {resolution}px and {classes} classes: write a proxy YAML "
            f"(e.g. my_proxy.yaml with data: imagenet, resolution: {resolution}, classes: "
            f"{classes}, epochs: 10), then: ccsearch train mnasnet_a1 --proxy my_proxy.yaml "
            f"--data {out}")


# ---- ccsearch run / worker ---------------------------------------------------------------


def _progress(config, label: str, what: str, quiet: bool):
    """A tqdm bar over the study's trained candidates, as a backend's progress callback."""
    if quiet:
        return None, None
    from tqdm import tqdm

    from ccsearch.search.policy import trained
    from ccsearch.search.record import Status

    bar = tqdm(total=config.wanted, desc=f"{label}{config.name}", unit="trial",
               dynamic_ncols=True, postfix={"data": what})

    def update(records) -> None:
        ok = [r.top1 for r in records if r.status == Status.OK and r.top1 is not None]
        bar.n = min(trained(records), bar.total)
        bar.set_postfix(best=f"{max(ok):.1f}%" if ok else "-",
                        infeasible=sum(r.status == Status.INFEASIBLE for r in records),
                        pruned=sum(r.status == Status.PRUNED for r in records), refresh=False)
        bar.refresh()

    return bar, update


def _quiet_optuna() -> None:
    """The CLI shows its own lines: Optuna's INFO logs ("A new study created...") go."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from ccsearch.results import points_over_baseline, summary_counts
    from ccsearch.search import backends, run
    from ccsearch.search.backends.workers import STORAGE_ENV
    from ccsearch.search.storage import shown_url
    from ccsearch.search.study import load_study_config
    from ccsearch.train import load_proxy_data

    _quiet_optuna()
    # Everything a user can get wrong is checked before the run folder or study exists.
    check_device(args.device, available=args.address is None)  # Ray checks a cluster's GPUs
    base = load_study_config(args.study)
    config = base.with_overrides(budget=args.budget, trials=args.trials, proxy=args.proxy,
                                 seed=args.seed, epochs=args.epochs)
    config = replace(config, name=args.name or config.run_name(base.budget))
    if args.backend == "ray" and args.workers != 1:
        raise UserError("--workers is for --backend optuna; Ray runs as many trials at once as "
                        "--cpus-per-trial / --gpus-per-trial allow")
    if args.backend == "optuna" and (args.address or args.gpus_per_trial is not None
                                     or args.cpus_per_trial is not None):
        raise UserError("--address, --cpus-per-trial and --gpus-per-trial need --backend ray")
    if not args.resume:
        config.check_budget()
    proxy = config.proxy_config()
    data = load_proxy_data(proxy, args.data)
    if args.backend == "ray":
        cpus = 1.0 if args.cpus_per_trial is None else args.cpus_per_trial
        options = backends.RayOptions(address=args.address, cpus_per_trial=cpus,
                                      gpus_per_trial=args.gpus_per_trial)
        if args.address is None and args.gpus_per_trial and not _cuda_count():
            raise UserError(f"--gpus-per-trial {args.gpus_per_trial:g}: this machine has no GPU "
                            "(use --gpus-per-trial 0, or --address of a cluster with GPUs)")
        backend = backends.RayTune(data, options, device=args.device)
    elif args.workers == 1:
        backend = backends.InProcess(args.data, args.device, proxy_data=data)
    else:
        backend = backends.WorkerProcesses(args.workers, args.data, args.device)
    out = Path(args.out) if args.out else Path("runs") / config.name
    storage = args.storage or os.environ.get(STORAGE_ENV)
    existed = out.exists()
    if args.resume:
        search, waiting = run.resume(config, out, storage, data=data.description,
                                     keep_trials=args.trials is None)
        config = search.config
        if waiting:
            print(f"resuming: trials {waiting} retry architectures whose trials were interrupted")
    else:
        search = run.create(config, out, storage, data=data.description, data_arg=args.data)
    print(f"study {config.name}: {config.search_space} under {format_madds(config.budget)} MADDs "
          f"({config.convention} convention, 224px), {plural(config.trials, 'candidate')}, "
          f"{config.sampler} sampler, {'no' if config.pruner == 'none' else config.pruner} pruning")
    print(f"proxy {proxy.name} on {data.description}, "
          f"{plural(proxy.epochs, 'epoch')} per candidate")
    print(f"storage {shown_url(search.storage_url)}")
    what = f"{args.workers} workers" if args.workers > 1 else data.description
    bar, progress = _progress(config, "", what, args.quiet)
    try:
        backend.run(search, progress)
    except UserError:
        if not args.resume and not run.started(search):  # refused before any trial:
            run.discard(search, existed)  # a retry must not meet "already holds a study"
        raise
    except KeyboardInterrupt:
        from ccsearch.search.recovery import release_session

        release_session(search.storage)  # a storage call Ctrl-C broke must not lock us out
        run.finalize(search)  # the finished trials' results, before exiting 130
        raise
    finally:
        if bar is not None:
            bar.close()
    files = run.finalize(search)
    table, front = files.table, files.front
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary_counts(table).items()))
    print(f"\n{plural(len(table), 'trial')}: {counts}")
    if front.empty:
        print("no trained candidate within the budget yet: nothing on the Pareto front")
    else:
        print(f"Pareto front (top-1 on {proxy.name} proxy vs MADDs, {config.convention} convention):")
        shown = front.assign(
            top1=front["top1"].map("{:.1f}%".format),
            vs_baseline=front["vs_baseline"].map(_points),
            madds=front["madds"].map(format_madds),
            params=front["params"].map(format_params),
        )[["trial", "reference", "top1", "vs_baseline", "madds", "params", "condconv", "experts",
           "routing"]]
        if not front["vs_baseline"].notna().any():
            shown = shown.drop(columns="vs_baseline")
        if not (front["reference"] != "").any():
            shown = shown.drop(columns="reference")
        print(shown.to_string(index=False))
    if config.sampler == "grid":  # the comparison studies: the paper's tables on this proxy
        _print_comparisons(table)
    for _, ref in table[(table["reference"] != "") & table["top1"].notna()].iterrows():
        over = points_over_baseline(ref["vs_baseline"], ref["reference"])
        print(f"reference {ref['reference']}: {ref['top1']:.1f}% at {format_madds(ref['madds'])}"
              + (f", {over}" if over else ""))
    if data.is_smoke_test:
        print(f"note: accuracies are on the {data.source} smoke-test proxy, not ImageNet")
    print(f"\nresults:   {files.results}")
    print(f"dashboard: {files.pareto}")
    if files.best is not None:
        from ccsearch.search.reproduce import train_command

        top = files.top
        record = search.records()[int(top["trial"])]
        over = points_over_baseline(top["vs_baseline"], top["reference"])
        print(f"best:      {files.best}  (trial {top['trial']}, {top['top1']:.1f}% at "
              f"{format_madds(top['madds'])}{', ' + over if over else ''}; "
              f"retrain it: {train_command(out, record)})")
    return 0


def _points(difference: float) -> str:
    """A ``vs_baseline`` cell: ``+1.2``, ``-3.4``, or empty where there is no baseline."""
    return "" if difference != difference else f"{difference:+.1f}"  # NaN: none yet


def _print_comparisons(table) -> None:
    """Proxy top-1 per routing activation, placement or SE choice, as the dashboard's
    comparison panel shows it."""
    from ccsearch.results import compared, comparison_summary

    trained = table[(table["status"] == "ok") & table["top1"].notna()]
    for title, rows in compared(trained).items():
        summary = comparison_summary(rows)
        shown = summary.assign(
            top1=summary["top1"].map("{:.1f}%".format),
            std=summary["std"].map(lambda s: "" if s != s else f"±{s:.1f}"),
            madds=summary["madds"].map(format_madds),
            vs_baseline=summary["vs_baseline"].map(_points),
        ).rename_axis(title).reset_index()
        if not summary["vs_baseline"].notna().any():
            shown = shown.drop(columns="vs_baseline")
        print(f"\n{title}: mean proxy top-1 of the trained candidates")
        print(shown.to_string(index=False))


def cmd_proxy_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ccsearch.search import backends, run
    from ccsearch.search.proxy_check import (
        NO_BUDGET,
        TARGET_TAU,
        check_config,
        predicted_tau_of_means,
        rank_stability,
    )
    from ccsearch.search.study import StudyConfig, load_study_config
    from ccsearch.train import load_proxy_data

    _quiet_optuna()
    check_device(args.device)
    if args.study and args.space:
        raise UserError("give --study or --space, not both")
    if args.space:
        base = StudyConfig(name="proxy_check", search_space=args.space, budget=NO_BUDGET)
    else:
        base = load_study_config(args.study or "mnasnet_a1_325m")
    base = base.with_overrides(proxy=args.proxy, epochs=args.epochs, seed=args.seed)
    config = check_config(base, args.candidates, args.seeds, bounded=not args.space)
    data = load_proxy_data(config.proxy_config(), args.data)
    out = Path(args.out) if args.out else Path("runs") / config.name
    existed = out.exists()
    if args.resume:
        search, _ = run.resume(config, out, data=data.description)
    else:
        search = run.create(config, out, data=data.description, data_arg=args.data)
    proxy = config.proxy_config()
    print(f"proxy check of {proxy.name} on {data.description}: {config.trials} candidates of "
          f"{config.search_space} (the baseline among them) x {config.repeats} seeds, "
          f"{plural(proxy.epochs, 'epoch')} each")
    bar, progress = _progress(config, "", data.description, args.quiet)
    try:
        backends.InProcess(args.data, args.device, proxy_data=data).run(search, progress)
    except UserError:
        if not args.resume and not run.started(search):
            run.discard(search, existed)
        raise
    finally:
        if bar is not None:
            bar.close()
    run.finalize(search)
    stability = rank_stability(search.records())
    (out / "proxy_check.json").write_text(json.dumps(stability.to_dict(), indent=2) + "\n")
    for row in sorted(stability.rows, key=lambda r: -r["top1"]):
        name = row["reference"] or f"trial {row['trial']}"
        seeds = " ".join(f"{t:.1f}" for t in row["seed_top1"])
        print(f"  {name:>10}  {row['top1']:5.1f}% ± {row['std']:.1f}   seeds: {seeds}   "
              f"{format_madds(row['madds'])}")
    print(f"seed-to-seed Kendall tau {stability.kendall_tau:.2f}, Spearman rho "
          f"{stability.spearman_rho:.2f}, noise floor {stability.noise_floor:.1f} points "
          f"(median |delta top-1| between seeds)")
    for k, tau in stability.means_tau.items():
        print(f"means of {k} seeds (as `repeats: {k}` ranks): Kendall tau {tau:.2f} measured "
              f"over the splits of the {stability.seeds} seeds, "
              f"{predicted_tau_of_means(stability.kendall_tau, k):.2f} predicted")
    n = stability.recommended_repeats
    if n is None:
        print("the seeds do not agree at all: no number of repeats makes this proxy rank")
    else:
        print(f"repeats: {n} per candidate for tau >= {TARGET_TAU} "
              f"(set `repeats: {n}` in the study)")
    if stability.saturated:
        print(f"warning: the baseline scores {stability.baseline_top1:.1f}%, within 5 points of "
              "100%: the proxy is saturated and cannot show what CondConv adds")
    print(f"results:   {out / 'proxy_check.json'}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ccsearch.search import backends, run
    from ccsearch.search.backends.workers import STORAGE_ENV
    from ccsearch.search.storage import open_storage

    check_device(args.device)
    _quiet_optuna()
    storage = args.storage or os.environ.get(STORAGE_ENV)
    if not storage:
        raise UserError(f"ccsearch worker needs --storage URL (or {STORAGE_ENV} in the environment)")
    open_storage(storage, heartbeats=False, must_exist=True)  # a worker never creates one
    search = run.join(storage, args.study)
    changes = run.proxy_changes(search.study, search.config)  # another ccsearch, another preset
    if changes:
        raise UserError(f"this worker cannot join study {args.study!r}: {changes[0]}")
    bar, progress = _progress(search.config, f"worker {os.getpid()} ", "", args.quiet)
    try:
        backends.InProcess(args.data, args.device).run(search, progress)
    finally:
        if bar is not None:
            bar.close()
    run.share_madds_cache(search.study)  # what this worker counted, for later processes
    return 0


# ---- ccsearch export / latency -----------------------------------------------------------


def _export_source(args: argparse.Namespace):
    """The spec to export and its provenance: a run's trial, or MODEL with its options."""
    from pathlib import Path

    from ccsearch.madds import parse_madds

    budget = parse_madds(args.budget) if args.budget else None
    if args.storage or Path(args.source, "study.yaml").is_file():
        from ccsearch.export import trial_provenance
        from ccsearch.results import select_trial

        search = open_run(args.source, args.storage, args.study)
        record = select_trial(search.study, args.trial, budget)
        provenance = trial_provenance(search, record)
        return ArchSpec.from_dict(record.spec), provenance
    if args.trial != "best" or budget is not None:
        raise UserError("--trial and --budget choose from a run folder; MODEL is exported as given")
    spec = _spec_from_args(args, args.source)
    return spec, {"model": args.source}


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ccsearch.export import export_model
    from ccsearch.latency import measure_latency

    spec, provenance = _export_source(args)
    weights = None
    if args.weights:
        from ccsearch.arch import spec_digest
        from ccsearch.checkpoint import read_checkpoint

        checkpoint = read_checkpoint(args.weights)
        if spec_digest(checkpoint.candidate) != spec_digest(spec):
            raise UserError(f"checkpoint {args.weights} was trained from another architecture "
                            f"({checkpoint.candidate.name}) than the one exported ({spec.name})")
        trained = dataclasses.replace(checkpoint.spec, num_classes=spec.num_classes, name=spec.name)
        if trained.to_dict() != spec.to_dict():
            raise UserError(f"checkpoint {args.weights} holds the proxy's reduced copy of the model "
                            "(width or depth changed): train with a proxy of width and depth 1.0 "
                            "to export its weights")
        spec = checkpoint.spec  # as trained: its classes are the data's
        weights = Path(args.weights) / "model.safetensors"
        provenance["checkpoint"] = {"folder": str(args.weights), "epochs": checkpoint.epochs_done,
                                    "top1": checkpoint.curve[-1] if checkpoint.curve else None,
                                    "data": checkpoint.data}
    latency = {"device": "cpu", "threads": torch_threads(),
               "rows": [r.to_dict() for r in measure_latency(spec, batches=(1,), min_run_time=0.2)]}
    out = export_model(spec, Path(args.out), provenance=provenance, weights=weights,
                       seed=provenance.get("seed", 0), onnx=args.onnx, force=args.force,
                       latency=latency)
    row = latency["rows"][0]
    print(f"exported {spec.name} to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    print(f"  {format_madds(count_madds(spec).madds)} MADDs (paper convention, 224px); latency at "
          f"batch 1 on this CPU: {row['model_ms']:.1f} ms, {row['ratio']:.2f}x its backbone "
          f"(MADDs {row['madds_ratio']:.3f}x)")
    if weights is None:
        print("  weights: freshly initialised (train it, e.g. ccsearch train ... --save DIR, "
              "then export with --weights DIR)")
    print(f"  load it: ccsearch.load({str(out)!r}), or torch.export.load('{out}/model.pt2')")
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def cmd_latency(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ccsearch.latency import measure_latency
    from ccsearch.train import resolve_device

    device = str(resolve_device(check_device(args.device)))  # auto: cuda if there is one
    model = None
    if Path(args.model, "arch.json").is_file():
        from ccsearch.export import load

        model = load(args.model)
        spec = ArchSpec.from_dict(json.loads(Path(args.model, "arch.json").read_text())["spec"])
    else:
        spec = _spec_from_args(args, args.model)
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise UserError(f"--batch {args.batch!r}: use sizes like 1,32") from None
    rows = measure_latency(spec, batches, device=device, threads=args.threads, model=model)
    print(f"{spec.name} against its backbone without CondConv, 224px, {device}, "
          f"{torch_threads()} threads (median of interleaved runs)")
    print(f"{'batch':>5}  {'model ms':>9}  {'backbone ms':>11}  {'latency':>8}  {'MADDs':>6}")
    for r in rows:
        print(f"{r.batch:>5}  {r.model_ms:>9.2f}  {r.baseline_ms:>11.2f}  {r.ratio:>7.2f}x  "
              f"{r.madds_ratio:>5.3f}x")
    return 0


# ---- ccsearch results / dashboard --------------------------------------------------------


def open_run(folder: str | None, storage: str | None, study: str | None):
    """A run to read: its folder (``runs/<study>``), or ``--storage URL --study NAME``
    (``--study NAME`` alone takes the URL from ``CCSEARCH_STORAGE``, which keeps its
    password out of the process list)."""
    from pathlib import Path

    from ccsearch.search import run
    from ccsearch.search.backends.workers import STORAGE_ENV

    _quiet_optuna()
    storage = storage or (os.environ.get(STORAGE_ENV) if study else None)
    if storage:
        if not study:
            raise UserError("--storage needs --study NAME")
        return run.join(storage, study)
    if study:
        raise UserError("--study NAME reads a study from --storage URL; a run folder names its own")
    if not folder:
        raise UserError("give a run folder (runs/<study>), or --storage URL --study NAME")
    return run.open_folder(Path(folder))


RESULT_FORMATS = ("table", "csv", "json", "parquet")


def _shown_table(table):
    """The results as a person reads them: units, one decimal, the long columns left out."""
    import pandas as pd

    def pct(x):
        return "" if pd.isna(x) else f"{x:.1f}%"  # missing: not trained to the end

    def madds(m):
        return "" if pd.isna(m) else format_madds(m)

    with_cc = table["condconv"] != "-"
    return table.assign(
        top1=[pct(t) + (f" ±{s:.1f}" if s == s else "") for t, s in
              zip(table["top1"], table["top1_std"], strict=True)],
        vs_baseline=table["vs_baseline"].map(_points),
        last_top1=table["last_top1"].map(pct),
        madds=table["madds"].map(madds),
        moe_madds=table["moe_madds"].where(with_cc).map(madds),  # only CondConv has experts
        params=table["params"].map(lambda n: "" if pd.isna(n) else format_params(n)),
        wall_time=table["wall_time"].map("{:.1f}s".format),
    ).drop(columns=["state", "top1_std", "budget", "train_time", "seed", "digest", "retrain"])


def cmd_results(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ccsearch.results import pareto_front, table_json, trials_table

    if args.format == "parquet":
        if not args.out:
            raise UserError("--format parquet writes a binary file: give -o FILE.parquet")
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow: pip install 'ccsearch[parquet]'") from None
    search = open_run(args.run, args.storage, args.study)
    table = trials_table(search.study, search.out)
    if args.pareto:
        table = pareto_front(table)
    if args.format == "parquet":
        table.to_parquet(args.out, index=False)
        print(f"{plural(len(table), 'row')} written to {args.out}")
        return 0
    if args.format == "csv":
        text = table.to_csv(index=False)
    elif args.format == "json":
        text = table_json(table)
    elif table.empty:
        text = "no trial on the Pareto front yet\n" if args.pareto else "no trial yet\n"
    else:
        text = _shown_table(table).to_string(index=False, na_rep="") + "\n"
        if search.out is not None and (table["retrain"] != "").any():
            text += f"retrain a trial exactly: ccsearch train --from-trial {search.out} N\n"
    if args.out:
        from ccsearch.run_report import atomic_write

        atomic_write(Path(args.out), text)
        print(f"{plural(len(table), 'row')} written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ccsearch.dashboard import (
        build_page,
        change_mark,
        load_dashboard,
        load_run,
        write_dashboard,
    )

    if not args.serve and (args.host or args.port is not None):
        raise UserError("--host and --port go with --serve")
    dashboard = load_dashboard(args.name)  # a bad name or YAML fails before any storage opens
    searches = [open_run(folder, None, None) for folder in args.runs]
    if args.storage or args.study or not searches:
        searches.append(open_run(None, args.storage, args.study))
    names = [s.out.name if s.out is not None else s.config.name for s in searches]
    if len(set(names)) < len(names):  # two folders of one name: tell them apart by path
        names = [str(s.out) if s.out is not None else s.config.name for s in searches]
    names = [n if names.count(n) == 1 else f"{n} ({i})" for i, n in enumerate(names, 1)]
    first = searches[0].out
    out = Path(args.out) if args.out else (first or Path(".")) / f"dashboard-{dashboard.name}.html"

    def runs():
        return [load_run(s.study, n, s.out) for s, n in zip(searches, names, strict=True)]

    if args.serve:
        from ccsearch.dashboard.serve import serve

        return serve(lambda version: build_page(runs(), dashboard, version=version),
                     lambda: [change_mark(s.study) for s in searches],
                     host=args.host or "127.0.0.1", port=8050 if args.port is None else args.port,
                     out=Path(args.out) if args.out else None)
    print(f"dashboard: {write_dashboard(runs(), dashboard, out)}")
    return 0


# ---- entry point -------------------------------------------------------------------------


def _add_model_arguments(p: argparse.ArgumentParser, positional: str | None = "model",
                         what: str = "", optional: bool = False) -> None:
    """MODEL and the CondConv options that ``resolve_spec`` applies to it."""
    if positional is not None:
        p.add_argument(positional, metavar=positional.upper() if what or optional else None,
                       nargs="?" if optional else None,
                       help=what or f"backbone ({', '.join(BACKBONES)}) or spec .json file")
    p.add_argument(
        "--condconv", metavar="GROUPS", help="block groups 1..N to make CondConv: 6,7 | 5-7 | all"
    )
    p.add_argument("--experts", type=int, help="experts per CondConv layer (default 8)")
    p.add_argument(
        "--routing", choices=ROUTING_ACTIVATIONS, help="routing activation (default sigmoid)"
    )
    p.add_argument(
        "--calibrated-routing", action="store_true",
        help="start every routing activation like sigmoid (what search spaces use by "
             "default; without it: the paper's raw routing)",
    )
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")


def _spec_from_args(args: argparse.Namespace, model: str) -> ArchSpec:
    """MODEL with the options of ``_add_model_arguments`` applied."""
    return resolve_spec(model, args.condconv, args.experts, args.routing, args.width,
                        calibrated_routing=args.calibrated_routing)


def build_parser() -> argparse.ArgumentParser:
    from ccsearch import __version__
    from ccsearch.config import shipped
    from ccsearch.train import PRESETS

    parser = _Parser(prog="ccsearch", description="Neural architecture search over CondConv.")
    parser.add_argument("--version", action="version", version=f"ccsearch {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    presets = ", ".join(PRESETS)

    p = sub.add_parser("madds", help="count multiply-adds of a backbone or spec (fvcore)")
    _add_model_arguments(p)
    p.add_argument("--resolution", type=int, default=224, help="input size in pixels (default 224)")
    p.add_argument(
        "--convention", choices=CONVENTIONS, default="paper", help="what counts (default paper)"
    )
    p.add_argument("--moe", action="store_true",
                   help="also count the same model with each CondConv layer as E separate convolutions")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_madds)

    p = sub.add_parser("train", help="train one candidate on a proxy task and print its accuracy")
    _add_model_arguments(p, optional=True)
    p.add_argument("--from-trial", nargs=2, metavar=("RUN", "N"),
                   help="retrain trial N of the run folder RUN exactly as it was trained")
    p.add_argument("--proxy",  # None, not "smoke": --from-trial refuses any explicit --proxy
                   help=f"proxy preset ({presets}) or .yaml file (default smoke)")
    p.add_argument(
        "--data", help="data source, PATH (format detected) or SOURCE=PATH; default: the proxy's"
    )
    p.add_argument("--epochs", type=int, help="override the proxy's epochs")
    p.add_argument("--batch-size", type=int, help="override the proxy's batch size")
    p.add_argument("--lr", type=float, help="override the proxy's peak learning rate")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--seed", type=int, help="seed of the initialisation and data order (default 0)"
    )
    p.add_argument("--repeats", type=int,
                   help="train with seeds SEED, SEED+1, ...: mean and std of top-1 (default 1)")
    p.add_argument("--threads", type=int,
                   help="torch threads (CPU results depend on it; default: torch's own)")
    p.add_argument("--save", metavar="DIR", help="write a checkpoint (safetensors + spec) after every epoch")
    p.add_argument("--resume-from", metavar="DIR", help="continue a checkpoint written by --save")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "prepare-data", help="decode an ImageNet folder once into a uint8 array cache"
    )
    p.add_argument(
        "source", choices=["imagenet"], help="data set layout (imagenet: train/<wnid>/*.JPEG)"
    )
    p.add_argument("--root", required=True, help="the data set folder")
    p.add_argument("-o", "--out", required=True, help="cache folder to write")
    p.add_argument(
        "--classes", type=int, help="class subset size, chosen reproducibly (default all)"
    )
    p.add_argument("--images-per-class", type=int, help="cap on training images per class")
    p.add_argument("--resolution", type=int, default=64, help="stored image size (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the class subset (default 0)")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an existing cache at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("run", help="search CondConv architectures under a MADD budget")
    p.add_argument("--budget", help="MADD budget at 224px: 325M, 0.6G, 4.1e9 (default: the study's)")
    p.add_argument("--study", default="mnasnet_a1_325m",
                   help=f"shipped study ({', '.join(shipped('studies'))}) or .yaml file "
                        "(default mnasnet_a1_325m)")
    p.add_argument("--trials", type=int, help="candidates to train (default: the study's)")
    p.add_argument("--proxy", help=f"proxy preset ({presets}) or .yaml file (default: the study's)")
    p.add_argument("--epochs", type=int, help="override the proxy's epochs (kept by the study)")
    p.add_argument("--data", help="data source, PATH or SOURCE=PATH (default: the proxy's; glyphs, digits and cluttered-digits are embedded)")
    p.add_argument("--backend", choices=["optuna", "ray"], default="optuna", help="trial runner (default optuna)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--address", help="--backend ray: join this Ray cluster (auto, or HOST:PORT of `ray start --head`)")
    p.add_argument("--cpus-per-trial", type=float, help="--backend ray: CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="--backend ray: GPUs per trial, fractions share a GPU (default 1 if the cluster has GPUs, else 0)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite in the run folder; postgresql://... for many machines)")
    p.add_argument("--out", help="run folder (default runs/<study>)")
    p.add_argument("--name", help="study name in the storage (default: the study's, or <space>_<budget>)")
    p.add_argument("--resume", action="store_true", help="continue a stopped study")
    p.add_argument("--seed", type=int, help="sampler and training seed (default: the study's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("proxy-check", help="how the proxy ranks candidates from seed to seed")
    p.add_argument("--study", help="the study whose space, budget and proxy to check (default mnasnet_a1_325m)")
    p.add_argument("--space", help="a search space (name or .yaml) instead of a study: no budget")
    p.add_argument("--proxy", help=f"proxy preset ({presets}) or .yaml file (default: the study's)")
    p.add_argument("--data", help="data source, PATH or SOURCE=PATH (default: the proxy's)")
    p.add_argument("--candidates", type=int, default=8, help="candidates, the baseline included (default 8)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per candidate (default 2)")
    p.add_argument("--epochs", type=int, help="override the proxy's epochs")
    p.add_argument("--seed", type=int, help="first seed (default: the study's)")
    p.add_argument("--out", help="run folder (default runs/proxy_check_<space>_<proxy>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted check")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_proxy_check)

    p = sub.add_parser("worker", help="join an existing study from another process or machine")
    p.add_argument("--storage",
                   help="the study's storage URL (default: $CCSEARCH_STORAGE, which keeps a password out of the process list)")
    p.add_argument("--study", required=True, help="the study's name in the storage")
    p.add_argument("--data", help="data source, PATH or SOURCE=PATH (default: the proxy's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("export", help="write a run's chosen architecture (or MODEL) as model files")
    p.add_argument("source", metavar="RUN|MODEL",
                   help="a run folder (runs/<study>), or a backbone / spec .json file")
    p.add_argument("--trial", default="best",
                   help="best (default), a trial number, or a reference of the study (baseline, paper)")
    p.add_argument("--budget", help="best under this MADD budget (may be tighter than the study's)")
    p.add_argument("--storage", help="the study's storage URL instead of a run folder (with --study)")
    p.add_argument("--study", help="the study's name in --storage")
    p.add_argument("--weights", metavar="CKPT", help="a checkpoint folder written by ccsearch train --save")
    p.add_argument("--onnx", action="store_true", help="also model.onnx (dynamic batch; the onnx extra)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.add_argument("-o", "--out", required=True, help="the folder to write")
    _add_model_arguments(p, positional=None)  # for MODEL
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("results", help="one row per trial of a run, as a table, CSV, JSON or parquet")
    p.add_argument("run", nargs="?", metavar="RUN", help="a run folder (runs/<study>)")
    p.add_argument("--storage", help="the study's storage URL instead of a run folder (with --study)")
    p.add_argument("--study", help="the study's name in --storage")
    p.add_argument("--format", choices=RESULT_FORMATS, default="table",
                   help="table (default), csv, json (a list of row objects) or parquet (needs -o)")
    p.add_argument("--pareto", action="store_true",
                   help="only the Pareto front: the non-dominated trained candidates within the budget, ties kept")
    p.add_argument("-o", "--out", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("dashboard", help="draw runs as one self-contained HTML dashboard, or serve it")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run folders (runs/<study>); the first is drawn, all fronts are overlaid")
    p.add_argument("--storage", help="also (or instead) the study in this storage URL (with --study)")
    p.add_argument("--study", help="the study's name in --storage")
    p.add_argument("--name", default="default",
                   help=f"shipped dashboard ({', '.join(shipped('dashboards'))}) or .yaml file "
                        "(default: default)")
    p.add_argument("-o", "--out", metavar="FILE.html",
                   help="the page to write (default RUN/dashboard-NAME.html)")
    p.add_argument("--serve", action="store_true",
                   help="serve the page over HTTP and redraw it as trials finish (Ctrl-C stops)")
    p.add_argument("--host", help="--serve: address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="--serve: port (default 8050; 0 picks a free one)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("latency", help="median latency of a model against its backbone without CondConv")
    _add_model_arguments(p, what=f"a backbone ({', '.join(BACKBONES)}), a spec .json file or an "
                                 "export folder")
    p.add_argument("--batch", default="1,32", help="batch sizes (default 1,32)")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("backbones", help="list the shipped backbones and their block groups")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_backbones)
    return parser


WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `ccsearch`: what it can do
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except UserError as err:
        print(f"ccsearch: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `ccsearch backbones | head`
        sys.stderr.close()
        return 0
    except OSError as err:  # a full disk, a read-only folder: every write is atomic, so
        if err.errno not in WRITE_FAILURES:  # the file it would replace is unchanged
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"ccsearch: error: cannot write{where}: {err.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: finished trials are in the storage already
        again = " (continue it with the same command and --resume)" if args.command == "run" else ""
        print(f"\nccsearch: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
