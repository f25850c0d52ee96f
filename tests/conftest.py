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


@pytest.fixture(params=["sync", "async"])
def both_ways(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test as written, then again with every pipeline run going through the async path.

    In the async round ``Pipeline.run`` is ``asyncio.run(pipeline.arun(...))``, ``run_batch``
    is ``arun_many``, and the model stages' ``run`` is their ``arun``: the test's assertions
    (entries, costs, budgets, what the model was asked) then check the async path too.
    """
    if request.param == "async":
        import asyncio
        from typing import Any

        from chainkit.pipeline import Pipeline
        from chainkit.stages import Generate, IntentScan, Summarise

        def run(self: Pipeline, item: Any, ledger: Any, *, resume: Any = False) -> Any:
            return asyncio.run(self.arun(item, ledger, resume=resume))

        def run_batch(
            self: Pipeline,
            items: Any,
            ledger: Any,
            *,
            concurrency: int = 8,
            progress: Any = None,
            resume: Any = False,
            return_exceptions: bool = False,
        ) -> Any:
            return asyncio.run(
                self.arun_many(
                    items,
                    ledger,
                    concurrency=concurrency,
                    progress=progress,
                    resume=resume,
                    return_exceptions=return_exceptions,  # type: ignore[call-overload]
                )
            )

        def stage_run(self: Any, item: Any, ledger: Any) -> Any:
            return asyncio.run(self.arun(item, ledger))

        monkeypatch.setattr(Pipeline, "run", run)
        monkeypatch.setattr(Pipeline, "run_batch", run_batch)
        for stage in (Generate, IntentScan, Summarise):
            monkeypatch.setattr(stage, "run", stage_run)
    return str(request.param)
