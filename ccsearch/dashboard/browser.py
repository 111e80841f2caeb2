"""Load a dashboard in headless Chromium and report what it drew, for tests and benchmarks.

A copy of the page gets two small scripts: one first, recording every JavaScript error and
``console.error``; one at the end that, after load, writes each plotly div's rendered
traces and data points into the DOM, which ``--dump-dom`` prints.  Chromium gets no
network (a proxy that answers nothing), so a page that needed a CDN would fail here.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ERRORS = """<script>window.__ccErrors = [];
addEventListener("error", function (e) { __ccErrors.push(String(e.message || e)); });
addEventListener("unhandledrejection", function (e) { __ccErrors.push(String(e.reason)); });
(function () { const log = console.error; console.error = function () {
  __ccErrors.push(Array.from(arguments).join(" ")); log.apply(console, arguments); }; })();
</script>"""

PROBE = """<script>addEventListener("load", function () { setTimeout(function () {
  function size(t) {
    let n = 0;
    for (const k of ["x", "y", "z", "values"]) { if (t[k] && t[k].length > n) n = t[k].length; }
    if (t.cells && t.cells.values) n = Math.max(n, t.cells.values.length);
    return n;
  }
  const plots = Array.from(document.querySelectorAll(".plotly-graph-div")).map(function (d) {
    return {id: d.id, traces: (d._fullData || []).length,
            points: (d._fullData || []).map(size).reduce(function (a, b) { return a + b; }, 0),
            annotations: ((d._fullLayout || {}).annotations || []).map(function (a) { return a.text; })};
  });
  const out = document.createElement("pre");
  out.id = "cc-probe";
  out.style.display = "none";
  out.textContent = JSON.stringify({plots: plots, errors: __ccErrors,
                                    page_seconds: performance.now() / 1000});
  document.body.appendChild(out);
}, 0); });
</script>"""

PROBE_OUT = re.compile(r'<pre id="cc-probe"[^>]*>(.*?)</pre>', re.S)


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                 "google-chrome"))), None)


def _chromium(*args: str, timeout: float) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH (make chromium installs Debian's)")
    with tempfile.TemporaryDirectory(prefix="ccsearch-chromium-") as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             *args], capture_output=True, text=True, timeout=timeout, check=False)


def check_page(page: Path, screenshot: Path | None = None, width: int = 1400,
               height: int = 5000, timeout: float = 180) -> dict:
    """Load ``page`` and return ``{"plots": [{id, traces, points, annotations}], "errors":
    [...], "page_seconds": in the page, "seconds": with Chromium's start}``; with ``screenshot``, also save a PNG of the page."""
    text = Path(page).read_text()
    text = text.replace("<head>", "<head>" + ERRORS, 1).replace("</body>", PROBE + "</body>", 1)
    with tempfile.TemporaryDirectory(prefix="ccsearch-page-") as tmp:
        probed = Path(tmp, "page.html")
        probed.write_text(text)
        url = probed.resolve().as_uri()
        start = time.perf_counter()
        done = _chromium("--dump-dom", "--virtual-time-budget=1000", url, timeout=timeout)
        seconds = time.perf_counter() - start
        found = PROBE_OUT.search(done.stdout)
        if found is None:
            raise RuntimeError(f"the page did not finish loading in Chromium: {done.stderr[-2000:]}")
        result = json.loads(html.unescape(found.group(1)))
        if screenshot is not None:
            _chromium(f"--screenshot={Path(screenshot).resolve()}",
                      f"--window-size={width},{height}", "--hide-scrollbars",
                      "--virtual-time-budget=1000", url, timeout=timeout)
    return {**result, "seconds": seconds}
