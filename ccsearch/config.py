"""Finding and reading the YAML configuration folders (search spaces, studies, dashboards).

The folders are found in a checkout (next to the package) and after a plain
``pip install`` (shipped inside the package as ``ccsearch/_configs/<kind>``).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from ccsearch.errors import UserError

_PACKAGE = Path(__file__).resolve().parent
KINDS = ("search_spaces", "studies", "dashboards")
_SINGULAR = {"search_spaces": "search space", "studies": "study", "dashboards": "dashboard"}


def config_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` files: the checkout's, else the installed copy."""
    assert kind in KINDS, kind
    for candidate in (_PACKAGE.parent / kind, _PACKAGE / "_configs" / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the shipped {kind}/ folder is missing from this installation")


def shipped(kind: str) -> list[str]:
    return sorted(p.stem for p in config_dir(kind).glob("*.yaml"))


YAML_SUFFIXES = (".yaml", ".yml")


def reads_as_path(text: str, suffixes: tuple[str, ...] = YAML_SUFFIXES) -> bool:
    """The rule that tells a file from a shipped name: it ends in one of ``suffixes`` or
    holds a folder separator.  Shipped names never do."""
    return text.endswith(suffixes) or "/" in text or os.sep in text


def resolve_name_or_path(
    name_or_path: str | Path,
    names: Collection[str] | None,
    *,
    what: str,
    suffixes: tuple[str, ...] = YAML_SUFFIXES,
    unknown: str | None = None,
) -> str | Path:
    """A shipped name or a file path, told apart one way for every kind of thing.

    Text that :func:`reads_as_path` is a path (``~`` expanded) and must name an existing
    file: the ``Path`` is returned.  Anything else is a name and is returned as the ``str``;
    with ``names`` it must be one of them (``unknown`` replaces the default message), with
    ``names=None`` the caller looks it up in its own table.
    """
    text = str(name_or_path)
    if reads_as_path(text, suffixes):
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f"{what} file not found: {path}")
        return path
    if names is not None and text not in names:
        raise UserError(unknown or f"unknown {what} {text!r}; shipped: {', '.join(names)}")
    return text


def resolve_config(kind: str, name_or_path: str | Path) -> Path:
    """A shipped name (``mnasnet_a1``) or a path to a YAML file."""
    found = resolve_name_or_path(name_or_path, shipped(kind), what=_SINGULAR[kind])
    return found if isinstance(found, Path) else config_dir(kind) / f"{found}.yaml"


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of fields at the top level")
    return data


def check_fields(path: Path, data: dict[str, Any], known: set[str], what: str = "") -> None:
    """One clear error naming fields a config file has but its dataclass does not."""
    unknown = sorted(set(data) - known)
    if unknown:
        label = f"unknown {what} field(s)" if what else "unknown field(s)"
        raise UserError(f"{path}: {label} {unknown}; known: {sorted(known)}")
