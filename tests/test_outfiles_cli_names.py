"""Odd ``--out`` names end to end, from a seventh adversarial round: /proc names of other
threads, writable procfs files, and ``chainkit export LEDGER --format focus --out X`` for
names no file can have. (The caller's own socket errors: test_outfiles_names_and_turns.py.)
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chainkit import Catalogue, Entry, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.errors import ConfigError
from chainkit.outfiles import refuse_ledger_as_out, write_atomically

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
NOVA = "amazon.nova-micro-v1:0"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    catalogue = Catalogue.load()
    start = datetime(2026, 11, 3, 9, 15, tzinfo=UTC)
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as ledger:
        ledger.record_many(
            [
                Entry(
                    request_id=f"r{m}",
                    stage="generate",
                    outcome="answered",
                    cost=catalogue.cost(NOVA, Usage(1000, 100)),
                    model=NOVA,
                    usage=Usage(1000, 100),
                    time=start + timedelta(minutes=m),
                )
                for m in (0, 60)
            ]
        )
    return path


@pytest.mark.parametrize("name", ["newdir/", "newdir/.", "newdir.parquet/"])
def test_export_focus_to_a_name_of_a_directory_is_refused(
    db: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found: write_focus turns --out into a Path, which drops a trailing "/" or "/.", so the
    # check that refuses a directory's name never sees it: `chainkit export L --format focus
    # --out newdir/` exits 0 and writes a FILE named "newdir" (open() says EISDIR), while
    # `--format emf --out newdir/` and `chainkit report --out newdir/` refuse it.
    if name.endswith(".parquet/"):
        pytest.importorskip("pyarrow")
    out = f"{db.parent}/{name}"  # a str: Path() would drop the trailing "/" itself
    status = main(["export", str(db), "--format", "focus", "--out", out])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "directory" in err, err
    assert not (db.parent / name.split("/")[0]).exists()


@pytest.mark.parametrize("out", ["a\0b.csv", "\ud800.csv"], ids=["NUL", "lone surrogate"])
def test_refuse_ledger_as_out_says_what_is_wrong_with_a_name_no_file_can_have(
    db: Path, out: str
) -> None:
    # Found: ValueError "embedded null byte" and UnicodeEncodeError, where write_atomically
    # gives a ConfigError for the same names. refuse_ledger_as_out is public and runs first.
    with pytest.raises(ConfigError):
        refuse_ledger_as_out(str(db), out)


@linux
def test_another_process_thread_directory_under_proc_self_is_not_this_process(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Found: /proc/self/task/<T>/fd/1 is matched on the pid alone, so a task id that is not
    # one of this process's threads (here a child's pid) still means "our fd 1": the export
    # went to stdout and reported success, where open() fails with ENOENT (no such task).
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            name = f"/proc/self/task/{child.pid}/fd/1"
            assert not Path(name).exists()
            with pytest.raises(ConfigError, match="No such file"), write_atomically(name) as f:
                f.write("secret-export\n")
        finally:
            child.kill()
    assert "secret-export" not in capfd.readouterr().out


@linux
def test_a_writable_proc_file_is_written_in_place_as_open_would() -> None:
    # Found: /proc/self/comm (a regular file, writable) gets ConfigError "Could not write
    # '/proc/self/comm' (FileNotFoundError: ...)": procfs refuses the temporary file with
    # ENOENT, which is not among the errors that send the write in place. open() writes it.
    comm = Path("/proc/self/comm").read_text(encoding="utf-8")
    with write_atomically("/proc/self/comm") as f:
        f.write(comm.rstrip("\n"))  # the kernel adds the newline when it is read
    assert Path("/proc/self/comm").read_text(encoding="utf-8") == comm
