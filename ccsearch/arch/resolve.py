"""MODEL as users write it: a backbone name or a spec file, plus CondConv options."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ccsearch.arch.backbones import get_backbone
from ccsearch.arch.spec import ArchSpec
from ccsearch.config import resolve_name_or_path
from ccsearch.errors import UserError

SPEC_SUFFIXES = (".json",)  # a MODEL that ends so (or holds a /) is a spec file, else a backbone


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
    name_or_path: str | Path,
    condconv: str | None = None,
    experts: int | None = None,
    routing: str | None = None,
    width: float = 1.0,
    calibrated_routing: bool = False,
) -> ArchSpec:
    """A shipped backbone name or a spec JSON file, with the CondConv options applied (the
    CLI's MODEL --condconv --experts --routing --calibrated-routing --width, and a study's
    ``references``).  ``calibrated_routing`` turns calibration on; a spec file that has it
    keeps it."""
    found = resolve_name_or_path(name_or_path, None, what="spec", suffixes=SPEC_SUFFIXES)
    if isinstance(found, Path):
        spec = ArchSpec.load(found)
        if width != 1.0:
            spec = spec.scale_width(width)
    else:
        spec = get_backbone(found, width)  # names its backbones when it is none of them
    if calibrated_routing:
        spec = replace(spec, calibrated_routing=True)
    if condconv is None:
        if experts is not None or routing is not None:
            raise UserError("--experts and --routing need --condconv GROUPS (e.g. --condconv 6,7)")
        return spec
    groups = parse_groups(condconv, len(spec.groups))
    return spec.with_condconv(groups, 8 if experts is None else experts, routing or "sigmoid")
