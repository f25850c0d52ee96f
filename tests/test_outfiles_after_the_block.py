"""Write errors after the block are the write's, whatever their errno; Ctrl-C says what it left.

From an eighth adversarial test, against 28cae7e (an errno whitelist let fsync errors escape
raw, ``run_command``'s one-line Ctrl-C dropped the note naming a half-copied file's content,
a FIFO's broken pipe escaped, ENOENT outside procfs was written by name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from chainkit.cli import run_command
from chainkit.errors import ConfigError
from chainkit.outfiles import write_atomically

# errnos that Linux file systems return from write(2)/fsync(2) but the whitelist leaves out:
# a FUSE daemon gone (sshfs), ext4 corruption, a CIFS/NFS server away or timed out (softerr).
_UNLISTED = ["ENOTCONN", "EUCLEAN", "EREMOTEIO", "EHOSTDOWN", "ENOLINK", "ETIMEDOUT", "ENOMEM"]


@pytest.mark.parametrize("name", _UNLISTED)
def test_fsync_error_after_the_block_is_a_config_error(tmp_path: Path, name: str) -> None:
    """fsync runs after the caller's block: its error is the write's, whatever its errno."""
    code = getattr(errno, name)
    out = tmp_path / "report.csv"
    out.write_text("old\n", encoding="utf-8")
    failure = OSError(code, os.strerror(code))  # as os.fsync raises it: no file name
    with (
        mock.patch("os.fsync", side_effect=failure),
        pytest.raises(ConfigError) as caught,
        write_atomically(out) as f,
    ):
        f.write("new\n")
    assert "Could not write" in str(caught.value)
    assert out.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_cli_fsync_error_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI promises one line and status 2 for a file that cannot be written."""
    out = tmp_path / "report.csv"

    def work() -> int:
        with write_atomically(out) as f:
            f.write("a,b\n")
        return 0

    failure = OSError(errno.EUCLEAN, os.strerror(errno.EUCLEAN))
    with mock.patch("os.fsync", side_effect=failure):
        status = run_command(work, prog="chainkit report")  # raises today: a traceback
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("chainkit report: Could not write") and err.count("\n") == 1


def test_ctrl_c_during_the_in_place_copy_says_where_the_content_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Interrupted while overwriting a file no rename can replace: the old file is gone.

    write_atomically puts a note on the interrupt naming the temporary file that holds the
    whole new content; run_command now prints only "interrupted", so the user is not told
    that the output is cut short nor where the complete content is.
    """
    out = tmp_path / "report.txt"
    out.write_text("OLD " * 1000, encoding="utf-8")
    real_replace = os.replace

    def busy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(dst) == str(out):  # a bind-mounted file: rename over it is EBUSY
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), os.fspath(src), os.fspath(dst))
        real_replace(src, dst, *args, **kwargs)

    def copy_then_interrupt(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        dst.write(src.read(100))
        dst.flush()
        raise KeyboardInterrupt  # Ctrl-C midway through the copy

    def work() -> int:
        with (
            mock.patch("os.replace", busy),
            mock.patch.object(shutil, "copyfileobj", copy_then_interrupt),
            write_atomically(out) as f,
        ):
            f.write("NEW " * 1000)
        return 0

    status = run_command(work, prog="chainkit report")
    assert status == 130
    assert out.stat().st_size == 100  # the old report is destroyed, the new one is partial
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".chainkit-")]
    assert len(temps) == 1 and temps[0].read_text(encoding="utf-8") == "NEW " * 1000
    err = capsys.readouterr().err
    assert str(temps[0]) in err, f"stderr does not say where the whole content is: {err!r}"


def test_broken_pipe_on_a_fifo_given_by_name_is_a_config_error(tmp_path: Path) -> None:
    """A FIFO is a pipe: its reader leaving is the write's error (a ConfigError), not raw."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)

    def reader() -> None:
        with open(fifo, "rb") as r:
            r.read(10)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with pytest.raises(ConfigError), write_atomically(fifo) as f:
            for i in range(200_000):
                f.write(f"line {i}\n")
    finally:
        thread.join(timeout=10)


def test_enoent_from_mkstemp_in_an_ordinary_directory_is_not_written_by_name(
    tmp_path: Path,
) -> None:
    """Only procfs/sysfs may be written by name: elsewhere an ENOENT (the directory removed
    and made again between the stat and mkstemp) must not turn into a non-atomic write.
    """
    folder = tmp_path / "reports"
    folder.mkdir()
    out = folder / "r.csv"
    out.write_text("old\n", encoding="utf-8")

    def racing_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        shutil.rmtree(folder)  # another process clears the directory...
        folder.mkdir()  # ...and makes it again
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))

    with (
        mock.patch("tempfile.mkstemp", racing_mkstemp),
        contextlib.suppress(ConfigError),
        write_atomically(out) as f,
    ):
        f.write("half of the new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    # "A failure leaves out as it was": the directory had no r.csv left; now it holds half.
    assert not out.exists(), f"a half-written file was left: {out.read_text(encoding='utf-8')!r}"


def test_ledger_name_unresolvable_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """refuse_ledger_as_out tolerates an --out it cannot resolve, but not the ledger's name:
    from a removed working directory, os.getcwd's FileNotFoundError (no file name) escapes.
    """
    from chainkit.outfiles import refuse_ledger_as_out

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    work = lambda: refuse_ledger_as_out("../ledger.db", str(tmp_path / "x.csv")) or 0  # noqa: E731
    status = run_command(work, prog="chainkit finops export")  # raises today: a traceback
    assert status in (0, 2)
    assert capsys.readouterr().err.count("\n") <= 1
