"""``ccsearch dashboard --serve``: the page over HTTP, redrawn as trials are sampled and finish.

The standard library's threaded HTTP server answers ``/`` (the page) and ``/version``
(which the page polls, reloading itself when it changes); the main thread watches the
studies and redraws.  Ctrl-C stops both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ccsearch.errors import UserError
from ccsearch.interrupts import CtrlC
from ccsearch.run_report import atomic_write


class _Page:
    """The page being served and its version, swapped whole under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.html, self.version = b"", b""

    def set(self, html: str, version: str) -> None:
        with self.lock:
            self.html, self.version = html.encode(), version.encode()

    def get(self, path: str) -> bytes | None:
        with self.lock:
            return {"/": self.html, "/index.html": self.html, "/version": self.version}.get(path)


def _handler(page: _Page) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = page.get(self.path.split("?", 1)[0])
            if body is None:
                self.send_error(404)
                return
            kind = "text/plain" if self.path.startswith("/version") else "text/html"
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 (quiet: no request log)
            pass

    return Handler


def serve(build: Callable[[str], str], mark: Callable[[], object], host: str = "127.0.0.1",
          port: int = 8050, out: Path | None = None, interval: float = 1.0) -> int:
    """Serve ``build(version)`` and redraw it whenever ``mark()`` changes; 0 on Ctrl-C.

    ``out``: also keep that file up to date.
    """
    page = _Page()
    try:
        server = ThreadingHTTPServer((host, port), _handler(page))
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    version, last = 0, object()
    # Ctrl-C stops the loop through a flag, as a KeyboardInterrupt raised inside a library
    # call of ``mark`` or ``build`` can be swallowed there (a test saw the server still
    # serving 60 s after Ctrl-C); a second Ctrl-C raises, should a redraw hang.
    with CtrlC(raise_at_once=False) as ctrl_c:
        try:
            while not ctrl_c.pressed:
                current = mark()
                if current != last:
                    version, last = version + 1, current
                    html = build(str(version))
                    page.set(html, str(version))
                    if out is not None:
                        atomic_write(out, html)
                if not thread.is_alive():
                    thread.start()
                    print(f"serving the dashboard at http://{host}:{server.server_address[1]}/ "
                          "(redrawn as trials finish; Ctrl-C stops)", flush=True)
                time.sleep(interval)
            print("\nstopped serving the dashboard", flush=True)
            return 0
        finally:
            if thread.is_alive():
                server.shutdown()
            server.server_close()
