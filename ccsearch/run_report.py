"""What ``ccsearch run`` leaves in its run folder besides the study and ``results.csv``:

- ``pareto.html``: the Pareto front (proxy top-1 against MADDs) as one self-contained
  plotly page (plotly.js embedded: clusters often have no internet);
- ``best_arch.json``: the ``ArchSpec`` of the most accurate candidate on the front, which
  ``ccsearch madds`` and ``ccsearch train`` take as MODEL.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go

from ccsearch.arch import ArchSpec
from ccsearch.madds import format_madds
from ccsearch.search.record import read

HOVER = "trial %{customdata[0]}<br>CondConv groups %{customdata[1]}<br>experts %{customdata[2]}<br>routing %{customdata[3]}<br>%{y:.1f}%% at %{x:.1f}M MADDs<extra></extra>"


def write_pareto_page(
    table: pd.DataFrame, front: pd.DataFrame, budget: int, title: str, path: Path
) -> Path:
    fig = go.Figure()
    front_trials = set(front["trial"])
    trained = table[(table["status"] == "ok") & table["top1"].notna()]
    others = trained[~trained["trial"].isin(front_trials)]
    for rows, name, style in (
        (others, "trained", {"mode": "markers", "marker": {"color": "#9aa5b1", "size": 8}}),
        (
            front,
            "Pareto front",
            {"mode": "lines+markers", "marker": {"color": "#d1495b", "size": 11}, "line": {"shape": "hv"}},
        ),
    ):
        fig.add_trace(
            go.Scatter(
                x=rows["madds"] / 1e6,
                y=rows["top1"],
                name=f"{name} ({len(rows)})",
                customdata=rows[["trial", "condconv", "experts", "routing"]].values,
                hovertemplate=HOVER,
                **style,
            )
        )
    infeasible = table[table["status"] == "infeasible"]
    if len(infeasible):
        fig.add_trace(
            go.Scatter(
                x=infeasible["madds"] / 1e6,
                y=[0.0] * len(infeasible),
                name=f"over budget, not trained ({len(infeasible)})",
                mode="markers",
                marker={"symbol": "x", "color": "#edae49", "size": 8},
                customdata=infeasible[["trial", "condconv", "experts", "routing"]].values,
                hovertemplate="trial %{customdata[0]}: %{x:.1f}M MADDs, over budget<extra></extra>",
            )
        )
    fig.add_vline(
        x=budget / 1e6,
        line_dash="dash",
        annotation_text=f"budget {format_madds(budget)}",
        annotation_position="top left",
    )
    fig.update_layout(
        title=title,
        xaxis_title="MADDs at 224px (millions)",
        yaxis_title="proxy top-1 (%)",
        template="plotly_white",
    )
    atomic_write(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
