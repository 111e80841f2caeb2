"""What ``ccsearch run`` leaves in its run folder besides the study and ``results.csv``:

- ``pareto.html``: the default dashboard (the Pareto front of proxy top-1 against MADDs
  and the other panels of ``dashboards/default.yaml``) as one self-contained page
  (plotly.js embedded: clusters often have no internet);
- ``best_arch.json``: the ``ArchSpec`` of the most accurate candidate on the front, which
  ``ccsearch madds`` and ``ccsearch train`` take as MODEL.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pandas as pd

from ccsearch.arch import ArchSpec
from ccsearch.search.record import read

if TYPE_CHECKING:
    from ccsearch.search.run import SearchRun


def write_pareto_page(run: SearchRun, path: Path) -> Path:
    """The run's default dashboard (``dashboards/default.yaml``): the same page
    ``ccsearch dashboard RUN`` draws, so there is one drawing path."""
    from ccsearch.dashboard import load_dashboard, load_run, write_dashboard

    return write_dashboard([load_run(run.study, run.config.name, run.out)], load_dashboard("default"), path)


def write_best_arch(study: optuna.Study, best: pd.Series, path: Path) -> Path:
    """The chosen candidate (``results.best_on_front``) as ArchSpec JSON."""
    spec = ArchSpec.from_dict(read(study.trials[int(best["trial"])]).spec)
    atomic_write(path, spec.to_json() + "\n")
    return path


def atomic_write(path: Path, text: str) -> None:
    """Write next to ``path`` and rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from the rest of a team
        os.replace(tmp, path)
    except OSError as err:  # a full disk: say which file, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"{err.strerror} (the previous file is unchanged)",
                      str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
