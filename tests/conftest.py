"""Fixtures shared by every test: AWS fenced off, a temporary directory, small fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials and moto around every test, so no test can reach (or pay) AWS."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def shared_data() -> Path:
    """The real data sets; tests that need them skip with the reason when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """A PostgreSQL server: $CHAINKIT_PG_DSN, else the throwaway cluster scripts/postgres starts."""
    import os
    import subprocess

    dsn = os.environ.get("CHAINKIT_PG_DSN")
    if dsn:
        return dsn
    if os.environ.get("CHAINKIT_REQUIRE_PG"):
        pytest.fail("CHAINKIT_REQUIRE_PG is set but CHAINKIT_PG_DSN is not: start scripts/postgres")
    try:
        started = subprocess.run(
            [str(ROOT / "scripts" / "postgres")], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no PostgreSQL: scripts/postgres could not run ({exc})")
    if started.returncode != 0:
        pytest.skip(f"no PostgreSQL: scripts/postgres failed: {started.stderr.strip()[-300:]}")
    return started.stdout.strip()


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema for one test's PostgreSQL ledger, dropped afterwards."""
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
