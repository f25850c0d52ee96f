"""The turns in-place writers take (``_take_turn``'s POSIX record lock), from a seventh adversarial
round: two processes leave one whole version; a file system without record locks is written
as open() would write it; Ctrl-C while waiting is one line.

The directory that takes no new file is simulated, as in test_outfiles_names_and_turns.py.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chainkit import outfiles
from chainkit.outfiles import write_atomically

ROOT = Path(__file__).resolve().parents[1]
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX record locks")

WRITER = """
import errno, os, sys, tempfile, time
from chainkit.outfiles import write_atomically

def no_new_files(*args, **kwargs):  # a directory the process may not add files to
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

tempfile.mkstemp = no_new_files
out, letter, size, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with write_atomically(out) as f:
    f.write(letter * (size // 2))
    f.flush()
    if go:
        with open(out, encoding="utf-8") as check:  # the caller reads its progress back
            check.read(10)
        print("midway", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.05)
    f.write(letter * (size - size // 2))
print("done", flush=True)
"""


def writer(out: Path, letter: str, size: int, go: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), letter, str(size), go],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def no_locks(code: int) -> Any:
    def lockf(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return lockf


def no_new_files(*args: object, **kwargs: Any) -> tuple[int, str]:
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))


@linux
@pytest.mark.parametrize(
    "code", [errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP], ids=["ENOLCK", "EINVAL", "EOPNOTSUPP"]
)
def test_a_file_system_without_record_locks_is_written_in_place_as_open_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # Found: lockf fails where the file system keeps no POSIX locks (ENOLCK: NFS without
    # lockd; EINVAL/EOPNOTSUPP: some FUSE and 9p mounts, the very mounts a file is
    # bind-mounted from), and the write is refused: ConfigError "Could not write ... (OSError:
    # No locks available); the file there may now be incomplete." open() writes that file,
    # and the file was untouched (the lock comes before the truncate), so the message is
    # wrong too. Taking turns is a courtesy between chainkit's writers; without locks the
    # write should go ahead as open() would.
    out = tmp_path / "focus.csv"
    out.write_text("old\n", encoding="utf-8")
    assert outfiles.fcntl is not None
    monkeypatch.setattr(outfiles.fcntl, "lockf", no_locks(code))
    monkeypatch.setattr(tempfile, "mkstemp", no_new_files)
    with write_atomically(out) as f:
        f.write("new\n")
    assert out.read_text(encoding="utf-8") == "new\n"


@linux
def test_two_processes_writing_in_place_leave_one_whole_version(tmp_path: Path) -> None:
    # Held (kept as a guard beside the failure above): four writers at once, each midway
    # through a large write when the others start, leave exactly one writer's whole content.
    out = tmp_path / "focus.csv"
    out.write_text("old\n", encoding="utf-8")
    writers = [writer(out, letter, 300_000) for letter in "pqrs"]
    started = time.monotonic()
    for w in writers:
        _, err = w.communicate(timeout=max(1.0, 120 - (time.monotonic() - started)))
        assert w.returncode == 0, err
    data = out.read_bytes()
    assert len(data) == 300_000 and len(set(data)) == 1, (len(data), set(data))


EXPORT = """
import errno, os, sys, tempfile
from chainkit.cli import main

def no_new_files(*args, **kwargs):  # a directory the process may not add files to
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

tempfile.mkstemp = no_new_files
sys.exit(main(["export", sys.argv[1], "--format", "focus", "--out", sys.argv[2]]))
"""


def waiting_for_a_lock(pid: int) -> bool:
    # /proc/locks lists a blocked request as "N: -> POSIX ADVISORY WRITE <pid> ...".
    lines = Path("/proc/locks").read_text(encoding="ascii").splitlines()
    return any("->" in line and f" {pid} " in line for line in lines)


@linux
def test_interrupting_an_export_waiting_for_its_turn_is_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    # Found (/tmp/attack7/sigint.sh, for real with chattr +i): while another process writes
    # the file, `chainkit export ... --out` waits in lockf without a word; the user's Ctrl-C
    # then prints a 42-line KeyboardInterrupt traceback ending in outfiles._turn.
    from chainkit import Catalogue, Entry, SQLiteLedger, Usage

    catalogue, model = Catalogue.load(), "amazon.nova-micro-v1:0"
    db = tmp_path / "ledger.db"
    with SQLiteLedger(db) as ledger:
        ledger.record(
            Entry(
                request_id="r1",
                stage="generate",
                outcome="answered",
                cost=catalogue.cost(model, Usage(1000, 100)),
                model=model,
                usage=Usage(1000, 100),
                time=datetime(2026, 11, 3, 9, 15, tzinfo=UTC),
            )
        )
    out = tmp_path / "focus.csv"
    out.write_text("old\n", encoding="utf-8")
    assert outfiles.fcntl is not None
    fd = os.open(out, os.O_WRONLY)
    try:
        outfiles.fcntl.lockf(fd, outfiles.fcntl.LOCK_EX)  # another writer's turn, under way
        with subprocess.Popen(
            [sys.executable, "-c", EXPORT, str(db), str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as export:
            deadline = time.monotonic() + 60
            while not waiting_for_a_lock(export.pid) and time.monotonic() < deadline:
                assert export.poll() is None, export.communicate()
                time.sleep(0.1)
            export.send_signal(signal.SIGINT)  # what Ctrl-C sends
            _, err = export.communicate(timeout=60)
    finally:
        os.close(fd)
    assert export.returncode != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    assert out.read_text(encoding="utf-8") == "old\n"
