"""``chainkit export`` as a command: it never harms the ledger, and refuses what it cannot do."""

from __future__ import annotations

import csv
import errno
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import Catalogue, Entry, SQLiteLedger, Usage
from chainkit.cli import main

CATALOGUE = Catalogue.load()
NOVA = "amazon.nova-micro-v1:0"
T0 = datetime(2026, 11, 3, 9, 15, tzinfo=UTC)


def call(minutes: int, *, cost: Decimal | str | None = "price", rid: str = "") -> Entry:
    usage = Usage(1000, 100)
    if cost == "price":
        cost = CATALOGUE.cost(NOVA, usage)
    return Entry(
        request_id=rid or f"r{minutes}",
        stage="generate",
        outcome="answered" if cost is not None else "failed",
        cost=cost,  # type: ignore[arg-type]
        model=NOVA,
        usage=usage,
        time=T0 + timedelta(minutes=minutes),
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """An SQLite ledger of calls an hour apart, with a write-ahead log beside it."""
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as ledger:
        ledger.record_many([call(m) for m in (0, 60, 120, 180)])
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    """The bytes of the ledger's file and of SQLite's files beside it."""
    return {
        p.name: p.read_bytes()
        for p in path.parent.iterdir()
        if p.name.startswith(path.name) and p.is_file()
    }


@pytest.mark.parametrize("fmt", ["focus", "emf"])
@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink", "-wal", "-shm"])
def test_an_out_that_is_the_ledger_is_refused_and_the_ledger_is_untouched(
    db: Path,
    fmt: str,
    how: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if how in ("-wal", "-shm"):
        out = Path(f"{db}{how}")
        out.write_bytes(b"")  # as a reader's SQLite leaves them
    elif how == "relative":
        monkeypatch.chdir(db.parent)
        (db.parent / "sub").mkdir()
        out = Path("sub/../ledger.db")
    elif how == "symlink":
        out = db.parent / "link.csv"
        out.symlink_to(db)
    elif how == "hardlink":
        out = db.parent / "hard.csv"
        os.link(db, out)
    else:
        out = db
    before = snapshot(db)
    assert main(["export", str(db), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is the ledger's own file" in err, err
    assert snapshot(db) == before
    with SQLiteLedger(db, read_only=True) as ledger:
        assert len(list(ledger.iter_entries())) == 4


def test_since_and_until_select_the_entries_of_a_focus_export(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.csv"
    argv = ["export", str(db), "--format", "focus", "--out", str(out), "--summary-format", "json"]
    assert main([*argv, "--since", "2026-11-03T10:00Z", "--until", "2026-11-03T12:00Z"]) == 0
    summary = json.loads(capsys.readouterr().out)
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    # The calls at 10:15 and 11:15, in their own whole-hour charge periods.
    assert {r["ChargePeriodStart"] for r in rows} == {
        "2026-11-03T10:00:00Z",
        "2026-11-03T11:00:00Z",
    }
    assert summary["entries"] == 2
    assert Decimal(summary["billed_cost"]) == 2 * call(0).cost  # type: ignore[operator]
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal(summary["billed_cost"])


@pytest.mark.parametrize(
    ("fmt", "extra", "flag"),
    [
        ("emf", ["--period", "day"], "--period"),
        ("emf", ["--unknown", "omit"], "--unknown"),
        ("emf", ["--billing-account-id", "a-1"], "--billing-account-id"),
        ("emf", ["--billing-account-name", "x"], "--billing-account-name"),
        ("emf", ["--region", "eu-west-1"], "--region"),
        ("cloudwatch", ["--period", "hour"], "--period"),
        ("cloudwatch", ["--out", "m.jsonl"], "--out"),
        ("focus", ["--namespace", "bot"], "--namespace"),
        ("focus", ["--resolution", "hour"], "--resolution"),
        ("focus", ["--tenant-tag", "team"], "--tenant-tag"),
    ],
)
def test_an_option_of_another_format_is_refused(
    db: Path,
    tmp_path: Path,
    fmt: str,
    extra: list[str],
    flag: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = [] if fmt == "cloudwatch" else ["--out", str(tmp_path / "o")]
    assert main(["export", str(db), "--format", fmt, *out, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag} " in err and f"--format {fmt}" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["123456789012", "1.5", "1e3", "nan", "true"])
@pytest.mark.parametrize("flag", ["--billing-account-id", "--billing-account-name"])
def test_a_numeric_billing_account_is_refused_in_csv(
    db: Path, tmp_path: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.csv"
    assert main(["export", str(db), "--format", "focus", "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {value!r} reads as a number" in err and "prefix it" in err
    assert not out.exists()
    assert (
        main(["export", str(db), "--format", "focus", "--out", str(out), flag, f"aws-{value}"]) == 0
    )
    with out.open(encoding="utf-8", newline="") as f:
        column = flag.removeprefix("--").title().replace("-", "")
        assert {r[column] for r in csv.DictReader(f)} == {f"aws-{value}"}


def test_only_unknown_costs_left_out_is_refused_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unknown.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(call(0, cost=None))
    out = tmp_path / "f.csv"
    assert (
        main(["export", str(path), "--format", "focus", "--out", str(out), "--unknown", "omit"])
        == 2
    )
    err = capsys.readouterr().err
    assert "Nothing to write" in err and "--unknown bound" in err
    assert not out.exists()


def test_an_unknown_cost_without_bound_is_worded_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unknown.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(call(0, cost=None))
    assert main(["export", str(path), "--format", "focus", "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert "at most unknown" not in err and "some have no bound" in err


def test_a_full_device_is_one_line_and_exit_2(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    for fmt in ("focus", "emf"):
        assert main(["export", str(db), "--format", fmt, "--out", "/dev/full"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "No space left on device" in err, err


@pytest.mark.parametrize("fmt", ["focus", "emf"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(
    db: Path,
    tmp_path: Path,
    fmt: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "f.csv"
    out.write_text("the previous export\n", encoding="utf-8")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(["export", str(db), "--format", fmt, "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "the previous export\n"
    assert [p.name for p in out_dir.iterdir()] == ["f.csv"]
    monkeypatch.undo()
    assert main(["export", str(db), "--format", fmt, "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") != "the previous export\n"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_export_keeps_symlinks_file_modes_and_long_names(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.csv"
    target.write_text("the previous export\n", encoding="utf-8")
    target.chmod(0o600)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    long_name = tmp_path / ("e" * 251 + ".csv")  # 255 bytes, the file system's limit
    japanese = tmp_path / ("費" * 83 + ".csv")  # 253 bytes in UTF-8
    previous = os.umask(0o027)
    try:
        for out in (link, long_name, japanese):
            assert main(["export", str(db), "--format", "focus", "--out", str(out)]) == 0
    finally:
        os.umask(previous)

    assert link.is_symlink() and target.read_text(encoding="utf-8").startswith("BilledCost")
    assert target.stat().st_mode & 0o777 == 0o600
    for fresh in (long_name, japanese):
        assert fresh.stat().st_mode & 0o777 == 0o640  # 0o666 under umask 0o027, as open() gives
        assert fresh.read_bytes() == target.read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_summary_gives_money_as_plain_decimals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tiny.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(call(0, cost=Decimal("4.9E-7")))
    out = str(tmp_path / "f.csv")
    assert (
        main(["export", str(path), "--format", "focus", "--out", out, "--summary-format", "json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert (summary["billed_cost"], summary["ledger_cost"]) == ("0.00000049", "0.00000049")
    assert main(["export", str(path), "--format", "focus", "--out", out]) == 0
    table = capsys.readouterr().out
    assert "E-" not in table and "$0.00000049" in table
