"""A dashboard as ONE self-contained HTML file: a header, then each panel's figure.

plotly.js is embedded once (about 4.6 MB): clusters and compute nodes often have no
network, and the file must open from a copied folder.  A served page (``reload=...``)
also polls the server and reloads itself when the study changed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from plotly.offline import get_plotlyjs

from ccsearch.dashboard.config import Dashboard
from ccsearch.dashboard.data import RunData
from ccsearch.dashboard.panels import PANELS, best_condconv
from ccsearch.madds import format_madds
from ccsearch.results import points_against, summary_counts
from ccsearch.run_report import atomic_write

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 2rem 2rem; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1rem; }
.run { margin: .3rem 0; } .muted { color: #666; }
.warning { background: #fff4d6; border: 1px solid #edae49; padding: .5rem .8rem; margin: .6rem 0; }
section { margin: 1.5rem 0; } section h2 { margin-bottom: .2rem; } .caption { color: #555; margin-top: 0; }
"""

# Reload when the server's version differs from the one this page was drawn at.
RELOAD = """<script>
(function () {
  const drawn = %s;
  setInterval(function () {
    fetch("version", {cache: "no-store"}).then(function (r) { return r.text(); })
      .then(function (v) { if (v.trim() !== drawn) { location.reload(); } })
      .catch(function () {});
  }, %d);
})();
</script>"""


def _against_references(run: RunData, row, what: str) -> str:
    """``best on the front: trial 7, 76.1% ...; +1.2 points over the baseline (74.9%)``."""
    name = f" ({row['reference']})" if row["reference"] else ""
    line = (f"{what}: trial {row['trial']}{name}, {row['top1']:.1f}% proxy top-1 at "
            f"{format_madds(row['madds'])} MADDs")
    for _, ref in run.references[run.references["top1"].notna()].iterrows():
        if ref["trial"] != row["trial"]:
            line += (f"; {points_against(row['top1'] - ref['top1'], 'the ' + ref['reference'])} "
                     f"({ref['top1']:.1f}%)")
    return line


def _run_header(run: RunData) -> str:
    config, measured = run.config, run.measured()
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary_counts(run.table).items()))
    lines = [f"<b>{html.escape(run.name)}</b>: search space {html.escape(run.space_name or '?')}"
             + (f", budget {format_madds(run.budget)} MADDs ({config.get('convention', 'paper')}"
                " convention, 224px)" if run.budget else "")
             + (f", {config['sampler']} sampler" if config.get("sampler") else "")]
    lines.append(f"{len(run.table)} trials" + (f": {counts}" if counts else ""))
    proxy = measured.proxy if measured else config.get("proxy", "")
    data = measured.data if measured else run.study.user_attrs.get("data", "")
    lines.append(f"proxy {html.escape(proxy or '?')} on {html.escape(data or '?')}")
    best = run.best
    if best is None:
        lines.append("no trained candidate yet: the panels fill in as trials finish")
    else:
        lines.append(html.escape(_against_references(run, best, "best on the front")))
        with_cc = best_condconv(run)
        if best["condconv"] == "-" and with_cc is not None:
            lines.append(html.escape(_against_references(run, with_cc, "best with CondConv")))
    return "<div class='run'>" + "<br>".join(lines) + "</div>"


def header(runs: list[RunData], dashboard: Dashboard) -> str:
    title = dashboard.title or "ccsearch dashboard"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if dashboard.description:
        parts.append(f"<p class='muted'>{html.escape(dashboard.description)}</p>")
    parts += [_run_header(run) for run in runs]
    if any(r.smoke_test for run in runs for r in run.records):
        parts.append("<div class='warning'><b>Smoke test:</b> accuracies are on an embedded "
                     "smoke-test proxy, not ImageNet. They check that the search runs; they "
                     "say nothing about ImageNet accuracy.</div>")
    return "<header>" + "\n".join(parts) + "</header>"


def build_page(runs: list[RunData], dashboard: Dashboard, version: str | None = None,
               poll_ms: int = 2000) -> str:
    """The page's HTML; ``version`` (served pages): reload when the server's changes."""
    sections = []
    for name in dashboard.panels:
        panel = PANELS[name]
        if panel.several_runs and len(runs) < 2:
            continue  # one run: its front is the Pareto panel
        fig = panel.draw(runs)
        fig.update_layout(template="plotly_white")
        if fig.layout.margin.t is None:
            fig.update_layout(margin={"t": 50, "b": 50})
        if fig.layout.height is None:
            fig.update_layout(height=460)
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"panel-{name}",
                          config={"displaylogo": False, "responsive": True})
        sections.append(f"<section id='{name}'><h2>{html.escape(panel.title)}</h2>"
                        f"<p class='caption'>{html.escape(panel.caption)}</p>{div}</section>")
    title = " / ".join(run.name for run in runs)
    reload = RELOAD % (json.dumps(version), poll_ms) if version is not None else ""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(dashboard.title or 'ccsearch')}: {html.escape(title)}</title>"
        f"<style>{STYLE}</style>"
        "<script type='text/javascript'>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>\n<body>\n"
        f"{header(runs, dashboard)}\n" + "\n".join(sections) + f"\n{reload}\n</body></html>\n"
    )


def write_dashboard(runs: list[RunData], dashboard: Dashboard, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, build_page(runs, dashboard))
    return path
