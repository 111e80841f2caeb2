"""Dashboards: a search's runs drawn as one self-contained HTML page.

``data`` loads runs into tables, ``panels`` draws one plotly figure per panel, ``config``
reads the panel lists of ``dashboards/*.yaml``, ``page`` assembles the HTML, ``serve``
serves it as trials finish and ``browser`` checks a page in headless Chromium.
"""

from ccsearch.dashboard.config import Dashboard, load_dashboard
from ccsearch.dashboard.data import RunData, change_mark, load_run
from ccsearch.dashboard.page import build_page, write_dashboard
from ccsearch.dashboard.panels import PANELS

__all__ = ["PANELS", "Dashboard", "RunData", "build_page", "change_mark", "load_dashboard",
           "load_run", "write_dashboard"]
