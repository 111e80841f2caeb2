"""Dashboard definitions (``dashboards/*.yaml``): a title and the panels to show, in order.

The YAML only names panels; what each draws lives in ``ccsearch/dashboard/panels.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ccsearch.config import check_fields, load_yaml_mapping, resolve_config
from ccsearch.dashboard.panels import PANELS
from ccsearch.errors import UserError


@dataclass(frozen=True)
class Dashboard:
    name: str
    panels: tuple[str, ...]
    title: str = ""
    description: str = ""


def load_dashboard(name_or_path: str | Path) -> Dashboard:
    """A shipped dashboard (``default``, ``paper``) or a YAML file; a ``UserError`` naming
    an unknown field or panel."""
    path = resolve_config("dashboards", name_or_path)
    data = load_yaml_mapping(path)
    check_fields(path, data, {f.name for f in fields(Dashboard)} - {"name"})
    panels = data.get("panels")
    if not isinstance(panels, list) or not panels or not all(isinstance(p, str) for p in panels):
        raise UserError(f"{path}: panels must be a list of panel names; known: {sorted(PANELS)}")
    unknown = [p for p in panels if p not in PANELS]
    if unknown:
        raise UserError(f"{path}: unknown panel(s) {unknown}; known: {sorted(PANELS)}")
    for key in ("title", "description"):
        if not isinstance(data.get(key, ""), str):
            raise UserError(f"{path}: {key} must be a string, got {data[key]!r}")
    return Dashboard(name=path.stem, panels=tuple(panels), title=data.get("title", ""),
                     description=data.get("description", ""))
