"""Fixtures shared by the search tests."""

from __future__ import annotations

import pytest
from _study import write_tiny_study


@pytest.fixture
def study_files(tmp_path):
    """A small, fast study (see ``_study.write_tiny_study``)."""
    return write_tiny_study(tmp_path)
