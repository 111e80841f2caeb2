"""Fixtures shared by the search tests."""

from __future__ import annotations

import pytest
from _study import write_tiny_study


@pytest.fixture
def study_files(tmp_path):
    """A small, fast study (see ``_study.write_tiny_study``)."""
    return write_tiny_study(tmp_path)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Two run folders of one real tiny study with a baseline reference (``_study.reference_runs``)."""
    from _study import reference_runs

    return reference_runs(tmp_path_factory.mktemp("tiny_runs"))


def pytest_terminal_summary(terminalreporter):
    """The case counts of the property-based tests (tests/test_properties.py)."""
    from _cases import CASES

    if CASES:
        terminalreporter.section("property-based cases generated (hypothesis)")
        for name, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{count:6d}  {name}")
        terminalreporter.write_line(f"{sum(CASES.values()):6d}  in all")
