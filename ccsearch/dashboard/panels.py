"""The dashboard panels: one function per panel, each taking the runs and returning a figure.

A panel with nothing to draw yet (no trained candidate, no routing statistics) returns a
figure that says so, never an error: a dashboard of a study that has just started still
renders.  Every panel draws the first run; ``runs`` overlays the fronts of all of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna._hypervolume import compute_hypervolume  # what plot_hypervolume_history uses
from plotly.subplots import make_subplots

from ccsearch.arch import ArchSpec
from ccsearch.dashboard.costs import group_costs, moe_madds
from ccsearch.dashboard.data import RunData
from ccsearch.dashboard.published import published_top1
from ccsearch.madds import format_madds
from ccsearch.results import compared, points_over_baseline
from ccsearch.search.record import Status

GREY, RED, GREEN, AMBER, TEAL = "#9aa5b1", "#d1495b", "#66a182", "#edae49", "#00798c"
PALETTE = ["#d1495b", "#00798c", "#edae49", "#30638e", "#66a182", "#8d96a3", "#6a4c93"]
NEAR_ZERO = 0.05  # the routing statistics' "close to 0"

LAYOUT_HOVER = ("trial %{customdata[0]}%{customdata[4]}<br>CondConv groups %{customdata[1]}"
                "<br>experts %{customdata[2]}<br>routing %{customdata[3]}%{customdata[6]}"
                "%{customdata[5]}")
HOVER_COLUMNS = ["trial", "condconv", "experts", "routing", "reference", "retrain", "vs_baseline"]


def empty(message: str) -> go.Figure:
    """A figure that only says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _mmadds(rows: pd.DataFrame) -> pd.Series:
    return rows["madds"].astype(float) / 1e6


def _hover(rows: pd.DataFrame) -> np.ndarray:
    data = rows[HOVER_COLUMNS].astype(object).to_numpy()
    data[:, 4] = [f" ({r})" if r else "" for r in data[:, 4]]  # the reference's name
    data[:, 5] = [f"<br>retrain: {c}" if c else "" for c in data[:, 5]]
    over = map(points_over_baseline, rows["vs_baseline"], rows["reference"])
    data[:, 6] = [f"<br>{o}" if o else "" for o in over]
    return data


def _label(row: pd.Series, value: str = "top1") -> str:
    name = f" {row['reference']}" if row["reference"] else ""
    return f"trial {row['trial']}{name}: {row[value]:.1f}% at {format_madds(row['madds'])}"


def _error_bars(rows: pd.DataFrame) -> dict | None:
    if rows["top1_std"].notna().any():
        return {"type": "data", "array": rows["top1_std"].fillna(0).to_numpy(), "thickness": 1}
    return None


# ---- Pareto front ------------------------------------------------------------------------


def pareto(runs: list[RunData]) -> go.Figure:
    """Trained, pruned (at their last epoch) and reference candidates, the front, the
    budget; over-budget and diverged ones on a strip below, never at 0%."""
    run = runs[0]
    table, front = run.table, run.front
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.84, 0.16],
                        vertical_spacing=0.04)
    others = run.trained[~run.trained["trial"].isin(front["trial"])]
    pruned = table[(table["status"] == "pruned") & table["last_top1"].notna()]
    hover = LAYOUT_HOVER + "<br>%{y:.1f}% at %{x:.1f}M MADDs<extra></extra>"
    for rows, y, name, style in (
        (others, "top1", f"trained ({len(others)})", {"mode": "markers", "marker": {
            "color": GREY, "size": 8}}),
        (pruned, "last_top1", f"pruned, at its last epoch ({len(pruned)})", {"mode": "markers",
            "marker": {"color": GREEN, "size": 8, "symbol": "circle-open", "line": {"width": 2}}}),
        (front, "top1", f"Pareto front ({len(front)})", {"mode": "lines+markers", "marker": {
            "color": RED, "size": 11}, "line": {"shape": "hv", "color": RED}}),
    ):
        fig.add_trace(go.Scatter(x=_mmadds(rows), y=rows[y], name=name, customdata=_hover(rows),
                                 hovertemplate=hover, error_y=_error_bars(rows), **style),
                      row=1, col=1)
    refs = run.references.assign(shown=run.references["top1"].fillna(run.references["last_top1"]))
    refs = refs[refs["shown"].notna()]
    if len(refs):
        fig.add_trace(go.Scatter(
            x=_mmadds(refs), y=refs["shown"], name="references", mode="markers+text",
            text=refs["reference"], textposition="top center", customdata=_hover(refs),
            marker={"symbol": "star", "size": 15, "color": TEAL, "line": {"width": 1}},
            hovertemplate=hover), row=1, col=1)
    strip = table[table["status"].isin(["infeasible", "diverged"]) & table["madds"].notna()]
    labels = strip["status"].map({"infeasible": "over budget", "diverged": "diverged"})
    fig.add_trace(go.Scatter(
        x=_mmadds(strip), y=labels, mode="markers", name=f"not trained / diverged ({len(strip)})",
        marker={"symbol": "x", "color": AMBER, "size": 8}, customdata=_hover(strip),
        hovertemplate=LAYOUT_HOVER + "<br>%{y}, %{x:.1f}M MADDs<extra></extra>"), row=2, col=1)
    if run.budget:
        fig.add_vline(x=run.budget / 1e6, line_dash="dash", row=1, col=1,
                      annotation_text=f"budget {format_madds(run.budget)}",
                      annotation_position="top left")
        fig.add_vline(x=run.budget / 1e6, line_dash="dash", row=2, col=1)
    if run.trained.empty and pruned.empty:
        fig.add_annotation(text="no trained candidate yet", showarrow=False, xref="x domain",
                           yref="y domain", x=0.5, y=0.5, font={"size": 15})
    fig.update_yaxes(title_text="proxy top-1 (%)", row=1, col=1)
    fig.update_yaxes(type="category", categoryorder="array",
                     categoryarray=["over budget", "diverged"], row=2, col=1)
    fig.update_xaxes(title_text="MADDs at 224px (millions)", row=2, col=1)
    fig.update_layout(height=560)
    return fig


# ---- search history ----------------------------------------------------------------------


def hypervolume_history(table: pd.DataFrame, budget: int) -> np.ndarray:
    """After each trial: the area the feasible front dominates, between 0% top-1 and the
    budget, as a fraction of the whole box (100% x budget)."""
    ok = (table["status"] == "ok") & table["top1"].notna()
    madds = table["madds"].astype(float).to_numpy()
    ref_madds = float(budget) if budget else float(np.nanmax(madds, initial=0.0)) * 1.05 or 1.0
    reference = np.array([0.0, ref_madds / 1e6])
    front, volume, out = np.empty((0, 2)), 0.0, []
    for good, top1, m in zip(ok, table["top1"].to_numpy(), madds, strict=True):
        if good and m < ref_madds:
            point = np.array([-top1, m / 1e6])  # both minimised, as optuna's helper wants
            if not (front <= point).all(axis=1).any():
                front = np.vstack([front[~(point <= front).all(axis=1)], point])
                volume = compute_hypervolume(front, reference, assume_pareto=True)
        out.append(volume / (100.0 * reference[1]))
    return np.array(out)


def history(runs: list[RunData]) -> go.Figure:
    run = runs[0]
    table = run.table.sort_values("trial")
    if run.trained.empty:
        return empty(f"{len(table)} trials sampled, none trained to the end yet")
    sampled = table["trial"] + 1
    best = table["top1"].where(table["status"] == "ok").cummax()
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=sampled, y=best, name="best feasible proxy top-1 (%)",
                             line={"shape": "hv", "color": RED},
                             hovertemplate="%{x} trials: %{y:.1f}%<extra></extra>"))
    fig.add_trace(go.Scatter(x=sampled, y=hypervolume_history(table, run.budget),
                             name="hypervolume (of 100% x budget)",
                             line={"shape": "hv", "color": TEAL, "dash": "dot"},
                             hovertemplate="%{x} trials: %{y:.4f}<extra></extra>"),
                  secondary_y=True)
    fig.update_xaxes(title_text="trials sampled")
    fig.update_yaxes(title_text="best proxy top-1 (%)", secondary_y=False)
    fig.update_yaxes(title_text="hypervolume", secondary_y=True)
    return fig


# ---- CondConv layout of the front --------------------------------------------------------


def _groups(run: RunData, trial: int) -> list[dict]:
    return (run.records[trial].spec or {}).get("groups", [])


def layout(runs: list[RunData]) -> go.Figure:
    """A row per front member (and reference), a column per block group."""
    run = runs[0]
    refs = run.references[~run.references["trial"].isin(run.front["trial"])]
    rows = pd.concat([run.front, refs[refs["madds"].notna()]])
    if rows.empty:
        return empty("nothing on the front yet")
    n = max(len(_groups(run, t)) for t in rows["trial"])
    z, text, hover = [], [], []
    for trial in rows["trial"]:
        groups = _groups(run, trial) + [{}] * (n - len(_groups(run, trial)))
        z.append([math.log2(g["experts"]) + 1 if g.get("experts") else 0 for g in groups])
        text.append([f"{g['experts']} {g['routing']}" if g.get("experts") else "" for g in groups])
        hover.append([f"{g.get('experts', 0)} experts, {g.get('routing')} routing, "
                      f"SE {g.get('se', 0):g}" if g.get("experts") else
                      f"static, SE {g.get('se', 0):g}" for g in groups])
    labels = [_label(r, "top1" if pd.notna(r["top1"]) else "last_top1") if pd.notna(
        r["top1"]) or pd.notna(r["last_top1"]) else f"trial {r['trial']} {r['reference']}"
        for _, r in rows.iterrows()]
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(g) for g in range(1, n + 1)], y=labels, text=text, texttemplate="%{text}",
        customdata=hover, hovertemplate="%{y}<br>group %{x}: %{customdata}<extra></extra>",
        colorscale="Blues", zmin=0, zmax=6, xgap=2, ygap=2,
        colorbar={"title": {"text": "experts"}, "tickvals": [0, 1, 2, 3, 4, 5, 6],
                  "ticktext": ["static", "1", "2", "4", "8", "16", "32"]}))
    fig.update_xaxes(title_text="block group", type="category")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(height=160 + 34 * len(rows))
    return fig


def best_condconv(run: RunData) -> pd.Series | None:
    """The most accurate candidate with CondConv trained to the end (fewer MADDs on ties)."""
    rows = run.trained[run.trained["condconv"] != "-"]
    if rows.empty:
        return None
    return rows.sort_values(["top1", "madds"], ascending=[False, True]).iloc[0]


# ---- MADD breakdown ----------------------------------------------------------------------


def madds(runs: list[RunData]) -> go.Figure:
    """Per block group, stacked: convolutions, CondConv mixing, routing; the best candidate
    with the references beside it."""
    run = runs[0]
    shown = [] if run.best is None else [("best", run.best)]
    with_cc = best_condconv(run)
    if with_cc is not None and run.best is not None and run.best["condconv"] == "-":
        shown.append(("best with CondConv", with_cc))  # the best is static: show CondConv's
    picked = {row["trial"] for _, row in shown}
    shown += [(r["reference"], r) for _, r in run.references.iterrows() if r["trial"] not in picked]
    shown = [(name, row) for name, row in shown if run.records[row["trial"]].spec]
    if not shown:
        return empty("no trained candidate yet")
    convention = run.config.get("convention", "paper")
    level0, level1, parts, notes = [], [], [], []
    for name, row in shown:
        spec = ArchSpec.from_dict(run.records[row["trial"]].spec)
        costs = group_costs(spec, convention)
        label = f"{name} (trial {row['trial']})"
        level0 += [label] * len(costs)
        level1 += [str(g) for g in range(1, len(costs) + 1)]
        parts += costs
        if spec.condconv_groups():  # the rebuttal's "capacity of E convolutions at x%"
            total, moe = int(row["madds"]), moe_madds(spec, convention)
            notes.append(f"{label}: {format_madds(total)}, {total / moe:.0%} of the "
                         f"{format_madds(moe)} of the same experts as separate convolutions")
    fig = go.Figure()
    for i, (name, color) in enumerate((("convolutions (as static)", GREY),
                                       ("CondConv kernel mixing", RED), ("routing FC", TEAL))):
        fig.add_trace(go.Bar(x=[level0, level1], y=[p[i] / 1e6 for p in parts], name=name,
                             marker_color=color,
                             hovertemplate="group %{x}: %{y:.2f}M<extra>" + name + "</extra>"))
    fig.update_layout(barmode="stack")
    if notes:
        fig.update_layout(title={"text": "<br>".join(notes), "font": {"size": 13}},
                          margin={"t": 40 + 22 * len(notes)})
    fig.update_yaxes(title_text=f"MADDs at 224px (millions, {convention} convention)")
    fig.update_xaxes(title_text="candidate / block group")
    return fig


# ---- routing sparsity --------------------------------------------------------------------


def routing(runs: list[RunData]) -> go.Figure:
    """Routing weights over the validation images, per CondConv group, of the most accurate
    candidate that recorded them: on the front if one there did (the best may be static)."""
    run = runs[0]
    recorded = [n for n in run.trained.sort_values(["top1", "madds"], ascending=[False, True])
                ["trial"] if run.records[n].routing_stats]
    on_front = [n for n in recorded if n in set(run.front["trial"])]
    if not recorded:
        return empty("no routing statistics recorded" + (
            "" if run.best is not None else ": no trained candidate yet"))
    trial = int((on_front or recorded)[0])
    stats = run.records[trial].routing_stats
    groups = sorted(stats, key=int)
    titles = [f"group {g}<br>{stats[g].get('near_zero', 0):.0%} below {NEAR_ZERO}, "
              f"{stats[g].get('active', 0):.1f} active" for g in groups]
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=titles, shared_yaxes=True)
    for i, g in enumerate(groups, start=1):
        (lo, hi), hist = stats[g]["bins"], np.asarray(stats[g]["hist"], dtype=float)
        edges = np.linspace(lo, hi, len(hist) + 1)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=hist / max(hist.sum(), 1),
                             width=(hi - lo) / len(hist), marker_color=TEAL, showlegend=False,
                             hovertemplate="weight %{x:.2f}: %{y:.1%} of weights<extra></extra>"),
                      row=1, col=i)
        fig.add_vline(x=NEAR_ZERO, line_dash="dot", line_color=RED, row=1, col=i)
        fig.update_xaxes(title_text="routing weight", row=1, col=i)
    fig.update_yaxes(title_text="fraction of weights", tickformat=".0%", row=1, col=1)
    fig.update_layout(margin={"t": 90}, title={
        "text": f"trial {trial}, the most accurate {'on the front ' if on_front else ''}with "
                f"CondConv (active: mean experts above {NEAR_ZERO} per image)", "y": 0.98,
        "font": {"size": 13}})
    return fig


# ---- parameter importance ----------------------------------------------------------------


def importance(runs: list[RunData]) -> go.Figure:
    """Optuna's PED-ANOVA evaluator on the proxy top-1 of the candidates trained to the end."""
    run = runs[0]
    trained = [t for t, r in zip(run.trials, run.records, strict=True)
               if r.status == Status.OK and r.top1 is not None]
    if len(trained) < 2:
        return empty("parameter importance needs at least two trained candidates")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory"
    try:
        study = optuna.create_study(directions=run.study.directions)  # no second storage read
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trained)
    with warnings.catch_warnings():  # "too few trials", "experimental"
        warnings.simplefilter("ignore")
        try:
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                target=lambda t: -t.values[0])  # PED-ANOVA: lower is better
        except (ValueError, RuntimeError) as err:
            return empty(f"parameter importance could not be computed: {err}")
    if not found:
        return empty("the trained candidates have no sampled parameter in common")
    names = list(found)[::-1]
    fig = go.Figure(go.Bar(x=[found[n] for n in names], y=names, orientation="h",
                           marker_color=TEAL, hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="importance for proxy top-1 (PED-ANOVA, normalised)")
    if not any(found.values()):
        fig.add_annotation(text=f"{len(trained)} trained candidates: too few to tell the "
                                "parameters apart", showarrow=False, xref="paper", yref="paper",
                           x=0.5, y=1.08)
    fig.update_layout(height=160 + 40 * len(names))
    return fig


# ---- learning curves ---------------------------------------------------------------------


def _lines(records) -> tuple[list, list, list]:
    """Every curve in one trace, separated by gaps: 10,000 trials stay one SVG path."""
    x, y, text = [], [], []
    for r in records:
        x += [*range(1, len(r.curve) + 1), None]
        y += [*r.curve, None]
        text += [f"trial {r.number}"] * len(r.curve) + [None]
    return x, y, text


def curves(runs: list[RunData]) -> go.Figure:
    run = runs[0]
    with_curve = [r for r in run.records if r.curve and r.trained]
    if not with_curve:
        return empty("no trained candidate yet")
    fig = go.Figure()
    hover = "%{text}, epoch %{x}: %{y:.1f}%<extra></extra>"
    groups = (
        ("trained", [r for r in with_curve if r.status != Status.PRUNED and not r.reference],
         {"color": GREY, "width": 1}),
        ("pruned", [r for r in with_curve if r.status == Status.PRUNED and not r.reference],
         {"color": GREEN, "width": 1, "dash": "dash"}),
    )
    for name, records, line in groups:
        x, y, text = _lines(records)
        fig.add_trace(go.Scatter(x=x, y=y, text=text, mode="lines", line=line, opacity=0.8,
                                 name=f"{name} ({len(records)})", hovertemplate=hover))
    stopped = groups[1][1]
    if stopped:
        fig.add_trace(go.Scatter(
            x=[len(r.curve) for r in stopped], y=[r.curve[-1] for r in stopped],
            text=[f"trial {r.number}" for r in stopped], mode="markers", name="pruned here",
            marker={"symbol": "x", "color": GREEN, "size": 8}, hovertemplate=hover))
    for i, r in enumerate(r for r in with_curve if r.reference):
        fig.add_trace(go.Scatter(x=list(range(1, len(r.curve) + 1)), y=r.curve, mode="lines",
                                 name=f"{r.reference} (trial {r.number})",
                                 text=[f"{r.reference}, trial {r.number}"] * len(r.curve),
                                 line={"color": PALETTE[(i + 1) % len(PALETTE)], "width": 3},
                                 hovertemplate=hover))
    if run.best is not None:
        best = run.records[int(run.best["trial"])]
        fig.add_trace(go.Scatter(x=list(range(1, len(best.curve) + 1)), y=best.curve,
                                 mode="lines+markers", name=f"best (trial {best.number})",
                                 line={"color": RED, "width": 3},
                                 text=[f"best, trial {best.number}"] * len(best.curve),
                                 hovertemplate=hover))
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="proxy top-1 (%)")
    return fig


# ---- study comparison (paper.yaml) -------------------------------------------------------


def comparison(runs: list[RunData]) -> go.Figure:
    """Proxy top-1 per routing activation, per placement, SE vs CondConv: bars of the mean
    with every trial as a point; the paper's ImageNet figures only in the side table."""
    run = runs[0]
    trained = run.trained
    shown = compared(trained)
    rows = max(len(shown), 1)
    specs = [[{"type": "xy"}, {"type": "table", "rowspan": rows} if i == 0 else None]
             for i in range(rows)]
    titles = [*shown] or [""]  # row by row: the table's title comes after the first plot's
    titles.insert(1, "published ImageNet top-1 (paper, not this proxy)")
    fig = make_subplots(rows=rows, cols=2, column_widths=[0.62, 0.38], specs=specs,
                        subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.16)
    for i, rows_ in enumerate(shown.values(), start=1):
        stats = rows_.groupby("key")["top1"].agg(["mean", "count"]).sort_index()
        fig.add_trace(go.Bar(x=stats.index, y=stats["mean"], marker_color=TEAL, opacity=0.6,
                             name="mean proxy top-1", showlegend=i == 1,
                             customdata=stats["count"],
                             hovertemplate="%{x}: %{y:.1f}% (mean of %{customdata})<extra></extra>"),
                      row=i, col=1)
        fig.add_trace(go.Scatter(x=rows_["key"], y=rows_["top1"], mode="markers",
                                 marker={"color": RED, "size": 8}, name="trials",
                                 showlegend=i == 1, customdata=_hover(rows_),
                                 hovertemplate=LAYOUT_HOVER + "<br>%{y:.1f}%<extra></extra>"),
                      row=i, col=1)
        fig.update_xaxes(type="category", row=i, col=1)
        fig.update_yaxes(title_text="proxy top-1 (%)", row=i, col=1)
    if not shown:
        fig.add_annotation(text="nothing to compare yet: the trained candidates differ in no "
                                "routing, placement or SE choice", showarrow=False,
                           xref="x domain", yref="y domain", x=0.5, y=0.5)
        fig.update_xaxes(visible=False, row=1, col=1)
        fig.update_yaxes(visible=False, row=1, col=1)
    published = published_top1(run.space_name) or [
        (f"no published figure for search space {run.space_name or '?'}", "")]
    fig.add_trace(go.Table(header={"values": ["setting (ImageNet, published)", "top-1"],
                                   "align": "left"},
                           cells={"values": [list(c) for c in zip(*published, strict=True)],
                                  "align": "left"}), row=1, col=2)
    fig.update_layout(height=max(420, 330 * rows))
    return fig


# ---- several runs ------------------------------------------------------------------------


def runs_overlay(runs: list[RunData]) -> go.Figure:
    """Every run's front on one axis (e.g. NSGA-II against random, or two budgets)."""
    if all(run.front.empty for run in runs):
        return empty("no run has a trained candidate yet")
    fig = go.Figure()
    for i, run in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        hover = LAYOUT_HOVER + f"<br>{run.name}: " + "%{y:.1f}% at %{x:.1f}M<extra></extra>"
        fig.add_trace(go.Scatter(x=_mmadds(run.trained), y=run.trained["top1"], mode="markers",
                                 marker={"color": color, "size": 6, "opacity": 0.3},
                                 legendgroup=run.name, name=f"{run.name}: trained",
                                 customdata=_hover(run.trained), hovertemplate=hover))
        fig.add_trace(go.Scatter(x=_mmadds(run.front), y=run.front["top1"], mode="lines+markers",
                                 line={"shape": "hv", "color": color}, marker={"size": 10},
                                 legendgroup=run.name, name=f"{run.name}: front ({len(run.front)})",
                                 customdata=_hover(run.front), hovertemplate=hover))
    for budget in sorted({run.budget for run in runs if run.budget}):
        fig.add_vline(x=budget / 1e6, line_dash="dash",
                      annotation_text=f"budget {format_madds(budget)}")
    fig.update_xaxes(title_text="MADDs at 224px (millions)")
    fig.update_yaxes(title_text="proxy top-1 (%)")
    return fig


class Panel(NamedTuple):
    title: str
    caption: str
    draw: Callable[[list[RunData]], go.Figure]
    several_runs: bool = False  # drawn only for two runs or more


PANELS: dict[str, Panel] = {
    "pareto": Panel("Pareto front", "Proxy top-1 against MADDs. Pruned candidates sit at their "
                    "last epoch; over-budget ones were never trained and sit on the strip below.",
                    pareto),
    "history": Panel("Search history", "Best feasible proxy top-1 and the front's hypervolume "
                     "as trials are sampled.", history),
    "layout": Panel("CondConv layout of the front", "Experts and routing per block group of "
                    "each front member (and reference); blank cells are static convolutions.",
                    layout),
    "madds": Panel("MADD breakdown", "Per block group: the convolutions themselves, CondConv's "
                   "kernel mixing and the routing FC, for the best candidate and the references; "
                   "above, each CondConv candidate against the same experts run as a mixture of "
                   "experts (E separate convolutions, outputs summed).",
                   madds),
    "routing": Panel("Routing sparsity", "Histograms of the routing weights over the "
                     "validation images, per CondConv group, of the most accurate CondConv "
                     "candidate (the paper's Fig. 4: many weights close to 0).",
                     routing),
    "importance": Panel("Parameter importance", "Which sampled choices matter for proxy "
                        "top-1 (Optuna's PED-ANOVA evaluator).", importance),
    "curves": Panel("Learning curves", "Per-epoch proxy top-1 of every trained candidate; "
                    "pruned ones dashed, stopped at the cross.", curves),
    "comparison": Panel("Study comparison", "Proxy top-1 per routing activation, placement, "
                        "SE vs CondConv: bars are means, points are trials. The paper's "
                        "ImageNet figures are only in the side table.", comparison),
    "runs": Panel("Several runs", "The runs' fronts on one axis.", runs_overlay,
                  several_runs=True),
}
