"""The ``ccsearch`` command line: a thin layer over the public API.

Every mistake a user can cause ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from ccsearch.arch import BACKBONES, ArchSpec, get_backbone
from ccsearch.arch.backbones import PUBLISHED
from ccsearch.errors import UserError
from ccsearch.layers import ROUTING_ACTIVATIONS
from ccsearch.madds import CONVENTIONS, MaddsReport, count_madds, format_madds

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


def parse_groups(text: str, num_groups: int) -> list[int]:
    """``"6,7"``, ``"5-7"`` or ``"all"`` -> block-group numbers (1-based)."""
    if text.strip().lower() == "all":
        return list(range(1, num_groups + 1))
    groups: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise UserError(f"--condconv {text!r}: the range {part!r} is reversed "
                                    f"(use {hi}-{lo})")
                groups.extend(range(lo, hi + 1))
            else:
                groups.append(int(part))
        except ValueError:
            raise UserError(
                f"--condconv {text!r}: {part!r} is not a block-group number "
                f"(use e.g. 6,7 or 5-7 or all)"
            ) from None
    return groups


def resolve_spec(
    name_or_path: str,
    condconv: str | None = None,
    experts: int | None = None,
    routing: str | None = None,
    width: float = 1.0,
) -> ArchSpec:
    """A shipped backbone name or a spec JSON file, with the CLI's CondConv options applied."""
    if name_or_path.endswith(".json"):
        spec = ArchSpec.load(name_or_path)
        if width != 1.0:
            spec = spec.scale_width(width)
    else:
        spec = get_backbone(name_or_path, width)
    if condconv is None:
        if experts is not None or routing is not None:
            raise UserError("--experts and --routing need --condconv GROUPS (e.g. --condconv 6,7)")
        return spec
    groups = parse_groups(condconv, len(spec.groups))
    return spec.with_condconv(groups, 8 if experts is None else experts, routing or "sigmoid")


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
    spec = resolve_spec(args.model, args.condconv, args.experts, args.routing, args.width)
    report = count_madds(spec, resolution=args.resolution, convention=args.convention)
    if args.json:
        print(json.dumps({**report.to_dict(), "spec": spec.to_dict()}, indent=2))
    else:
        _print_madds(spec, report)
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
    from ccsearch.train import get_proxy, load_proxy_data, train_candidate

    check_device(args.device)
    spec = resolve_spec(args.model, args.condconv, args.experts, args.routing, args.width)
    proxy = get_proxy(args.proxy, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    data = load_proxy_data(proxy, args.data, seed=args.seed)
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
    result = train_candidate(spec, proxy, data, device=args.device, on_epoch=report, seed=args.seed,
                             save_to=args.save, resume=resume)
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
        if result.smoke_test:
            print(
                "note: digits is a smoke-test proxy, not ImageNet; its accuracy says nothing about ImageNet"
            )
        if args.save:
            print(f"checkpoint: {args.save}  (continue with --resume-from {args.save})")
    return 0 if result.status == "ok" else 1


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

    bar = tqdm(total=config.trials, desc=f"{label}{config.name}", unit="trial",
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

    from ccsearch.results import summary_counts
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
    data = load_proxy_data(proxy, args.data, seed=config.seed)
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
        search = run.create(config, out, storage, data=data.description)
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
        if not args.resume and not search.study.trials:  # refused before any trial:
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
            madds=front["madds"].map(format_madds),
            params=front["params"].map(format_params),
        )[["trial", "top1", "madds", "params", "condconv", "experts", "routing"]]
        print(shown.to_string(index=False))
    if data.is_smoke_test:
        print("note: accuracies are on the digits smoke-test proxy, not ImageNet")
    print(f"\nresults:   {files.results}")
    print(f"dashboard: {files.pareto}")
    if files.best is not None:
        top = files.top
        again = f"ccsearch train {files.best} --proxy {config.proxy} --seed {int(top['seed'])}"
        if config.epochs is not None:
            again += f" --epochs {config.epochs}"
        if args.data:
            again += f" --data {args.data}"
        print(f"best:      {files.best}  (trial {top['trial']}, {top['top1']:.1f}% at "
              f"{format_madds(top['madds'])}; e.g. {again})")
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
    bar, progress = _progress(search.config, f"worker {os.getpid()} ", "", args.quiet)
    try:
        backends.InProcess(args.data, args.device).run(search, progress)
    finally:
        if bar is not None:
            bar.close()
    return 0


# ---- ccsearch export / latency -----------------------------------------------------------


def _export_source(args: argparse.Namespace):
    """The spec to export and its provenance: a run's trial, or MODEL with its options."""
    from pathlib import Path

    from ccsearch.madds import parse_madds

    budget = parse_madds(args.budget) if args.budget else None
    if args.storage or Path(args.source, "study.yaml").is_file():
        from ccsearch.results import select_trial
        from ccsearch.search import run
        from ccsearch.search.storage import shown_url

        _quiet_optuna()
        if args.storage:
            if not args.study:
                raise UserError("--storage needs --study NAME")
            search = run.join(args.storage, args.study)
        else:
            search = run.open_folder(Path(args.source))
        record = select_trial(search.study, args.trial, budget)
        provenance = {
            "study": search.config.name,
            "storage": shown_url(search.storage_url),
            "trial": record.number,
            "seed": record.seed,
            "proxy": record.proxy,
            "data": record.data,
            "proxy_top1": record.top1,
            "smoke_test": record.smoke_test,
            "budget": search.config.budget,
            "references": [],  # the baseline and the paper's design: trained with issue 13
        }
        return ArchSpec.from_dict(record.spec), provenance
    if args.trial != "best" or budget is not None:
        raise UserError("--trial and --budget choose from a run folder; MODEL is exported as given")
    spec = resolve_spec(args.source, args.condconv, args.experts, args.routing, args.width)
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
        spec = resolve_spec(args.model, args.condconv, args.experts, args.routing, args.width)
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


# ---- entry point -------------------------------------------------------------------------


def _add_model_arguments(p: argparse.ArgumentParser, positional: str | None = "model",
                         what: str = "") -> None:
    """MODEL and the CondConv options that ``resolve_spec`` applies to it."""
    if positional is not None:
        p.add_argument(positional, metavar=positional.upper() if what else None,
                       help=what or f"backbone ({', '.join(BACKBONES)}) or spec .json file")
    p.add_argument(
        "--condconv", metavar="GROUPS", help="block groups 1..N to make CondConv: 6,7 | 5-7 | all"
    )
    p.add_argument("--experts", type=int, help="experts per CondConv layer (default 8)")
    p.add_argument(
        "--routing", choices=ROUTING_ACTIVATIONS, help="routing activation (default sigmoid)"
    )
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")


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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_madds)

    p = sub.add_parser("train", help="train one candidate on a proxy task and print its accuracy")
    _add_model_arguments(p)
    p.add_argument("--proxy", default="smoke",
                   help=f"proxy preset ({presets}) or .yaml file (default smoke)")
    p.add_argument(
        "--data", help="data source, PATH (format detected) or SOURCE=PATH; default: the proxy's"
    )
    p.add_argument("--epochs", type=int, help="override the proxy's epochs")
    p.add_argument("--batch-size", type=int, help="override the proxy's batch size")
    p.add_argument("--lr", type=float, help="override the proxy's peak learning rate")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for data split, init and order (default 0)"
    )
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
    p.add_argument("--data", help="data source, PATH or SOURCE=PATH (default: the proxy's; digits = embedded)")
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
    p.add_argument("--trial", default="best", help="best (default) or a trial number")
    p.add_argument("--budget", help="best under this MADD budget (may be tighter than the study's)")
    p.add_argument("--storage", help="the study's storage URL instead of a run folder (with --study)")
    p.add_argument("--study", help="the study's name in --storage")
    p.add_argument("--weights", metavar="CKPT", help="a checkpoint folder written by ccsearch train --save")
    p.add_argument("--onnx", action="store_true", help="also model.onnx (dynamic batch; the onnx extra)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.add_argument("-o", "--out", required=True, help="the folder to write")
    _add_model_arguments(p, positional=None)  # for MODEL
    p.set_defaults(func=cmd_export)

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
    except KeyboardInterrupt:  # Ctrl-C: finished trials are in the storage already
        again = " (continue it with the same command and --resume)" if args.command == "run" else ""
        print(f"\nccsearch: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
