"""Every stage test runs both ways: as written, and through the async path (see ``both_ways``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _stages_both_ways(both_ways: str) -> str:
    return both_ways
