"""Dashboards: every shipped one renders in headless Chromium, --serve follows the study,
and bad input is one line with exit code 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request

import optuna
import pytest
from _study import cli_argv, load, stop, wait_for

from ccsearch.cli import main
from ccsearch.config import shipped
from ccsearch.dashboard import load_dashboard
from ccsearch.dashboard.browser import check_page, find_chromium
from ccsearch.dashboard.serve import serve
from ccsearch.search import load_study_config, run
from ccsearch.search.record import KEY, Status, TrialRecord, read_all


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium (``make chromium`` installs it): a test that needs it fails without."""
    binary = find_chromium()
    assert binary, "chromium is not installed: run `make chromium` (apt-get install chromium)"
    return binary


@pytest.mark.parametrize("name", shipped("dashboards"))
def test_every_shipped_dashboard_renders_every_panel(tiny_runs, tmp_path, chromium, capsys,
                                                     name):
    page = tmp_path / f"{name}.html"
    assert main(["dashboard", *map(str, tiny_runs), "--name", name, "-o", str(page)]) == 0
    assert capsys.readouterr().out.strip() == f"dashboard: {page}"
    result = check_page(page, screenshot=tmp_path / f"{name}.png")
    assert result["errors"] == []
    plots = {p["id"]: p for p in result["plots"]}
    for panel in load_dashboard(name).panels:
        drawn = plots[f"panel-{panel}"]
        assert drawn["traces"] and drawn["points"], (panel, drawn)
        assert not any(a and a.startswith("no ") for a in drawn["annotations"]), (panel, drawn)
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_the_header_names_proxy_data_smoke_test_and_the_baseline(tiny_runs, tmp_path):
    page = tmp_path / "page.html"
    assert main(["dashboard", str(tiny_runs[0]), "-o", str(page)]) == 0
    text = page.read_text()
    assert "proxy proxy on digits 8x8 upsampled to 32px" in text
    assert "Smoke test:</b> accuracies are on an embedded smoke-test proxy, not ImageNet" in text
    records = read_all(load(tiny_runs[0]))
    baseline = next(r for r in records if r.reference == "baseline")
    condconv = max((r for r in records if r.status == Status.OK and r.reference == ""),
                   key=lambda r: r.top1)  # the candidate with CondConv in layer 12
    d = condconv.top1 - baseline.top1
    assert (f"+{d:.1f} points over the baseline" if d >= 0 else
            f"{-d:.1f} points under the baseline") in text
    assert '"text":["baseline"]' in text.replace(" ", "")  # the reference's labelled marker
    assert "panel-runs" not in text  # one run: no overlay


def test_pareto_html_is_the_default_dashboard(tiny_runs):
    """``finalize`` draws pareto.html with the default dashboard: one drawing path."""
    text = (tiny_runs[0] / "pareto.html").read_text()
    for panel in load_dashboard("default").panels:
        if panel != "runs":
            assert f'id="panel-{panel}"' in text, panel


def test_a_study_with_no_trained_trial_still_renders(tmp_path, chromium, capsys):
    from _study import write_tiny_study

    write_tiny_study(tmp_path)
    run.create(load_study_config(tmp_path / "study.yaml"), tmp_path / "empty")
    page = tmp_path / "empty.html"
    assert main(["dashboard", str(tmp_path / "empty"), "--name", "paper", "-o", str(page)]) == 0
    assert "no trained candidate yet" in page.read_text()
    result = check_page(page)
    assert result["errors"] == [] and len(result["plots"]) == len(load_dashboard("paper").panels) - 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dashboard", "{tmp}"], "is not a run folder (no study.yaml and study.db in it)"),
        (["results", "{tmp}"], "is not a run folder (no study.yaml and study.db in it)"),
        (["dashboard", "{run}", "--name", "nope"], "unknown dashboard 'nope'; shipped: default, paper"),
        (["dashboard", "{run}", "--name", "{tmp}/bad.yaml"], "unknown field(s) ['colour']"),
        (["dashboard", "{run}", "--name", "{tmp}/panel.yaml"], "unknown panel(s) ['pie']"),
        (["dashboard", "{run}", "--port", "8000"], "--host and --port go with --serve"),
        (["results", "{run}", "--format", "parquet"], "give -o FILE.parquet"),
        (["results"], "give a run folder (runs/<study>), or --storage URL --study NAME"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_runs, tmp_path, capsys, argv, message):
    (tmp_path / "bad.yaml").write_text("panels: [pareto]\ncolour: red\n")
    (tmp_path / "panel.yaml").write_text("panels: [pareto, pie]\n")
    argv = [a.format(tmp=tmp_path, run=tiny_runs[0]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ccsearch: error: ") and message in err, err


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def test_serve_shows_a_trial_that_finished_after_it_started_and_ctrl_c_exits_0(tiny_runs,
                                                                               tmp_path):
    import shutil

    folder = tmp_path / "served"
    shutil.copytree(tiny_runs[0], folder)
    proc = subprocess.Popen([*cli_argv("dashboard", str(folder), "--serve", "--port", "0")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = wait_for("the server's address", proc.stdout.readline, proc=proc, timeout=120)
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        page = _get(url)
        assert "location.reload()" in page and "plotly" in page
        version = _get(url + "version")

        # A worker finishes a trial: the best so far, within the budget.
        study = load(folder)
        template = next(r for r in read_all(study) if r.status == Status.OK and not r.reference)
        trial = study.ask()
        record = TrialRecord.from_dict(template.to_dict(), trial.number)
        record.top1, record.curve, record.digest = 99.5, [50.0, 99.5], "served"
        trial.set_user_attr(KEY, record.to_dict())
        study.tell(trial, [99.5, float(record.madds)], state=optuna.trial.TrialState.COMPLETE)

        wanted = f"best on the front: trial {trial.number}, 99.5% proxy top-1"
        wait_for("the served page to show the new trial", lambda: wanted in _get(url),
                 proc=proc, timeout=120)
        assert _get(url + "version") != version  # what makes an open page reload
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err


def test_serve_stops_on_ctrl_c_that_a_redraw_swallows(capsys):
    """Ctrl-C during a redraw whose library code catches the KeyboardInterrupt still stops
    the server (the flake of the test above: still serving 60 s after SIGINT)."""
    calls = []

    def mark() -> int:
        calls.append(1)
        assert len(calls) < 100, "still serving after Ctrl-C"
        if len(calls) == 2:
            try:  # what a library that catches BaseException does with Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**6):  # the handler runs between bytecodes
                    pass
            except KeyboardInterrupt:
                pass
        return len(calls)

    previous = signal.getsignal(signal.SIGINT)
    assert serve(lambda version: f"<p>{version}</p>", mark, port=0, interval=0.01) == 0
    assert "stopped serving the dashboard" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is previous
    assert len(calls) == 2
