"""Finding and reading the YAML configuration folders (search spaces, studies, dashboards).

The folders are found in a checkout (next to the package) and after a plain
``pip install`` (shipped inside the package as ``ccsearch/_configs/<kind>``).
"""

from __future__ import annotations

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


def resolve_config(kind: str, name_or_path: str | Path) -> Path:
    """A shipped name (``mnasnet_a1``) or a path to a YAML file."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f"{_SINGULAR[kind]} file not found: {path}")
        return path
    path = config_dir(kind) / f"{text}.yaml"
    if not path.is_file():
        raise UserError(
            f"unknown {_SINGULAR[kind]} {text!r}; shipped: {', '.join(shipped(kind))}"
        )
    return path


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
