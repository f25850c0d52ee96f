"""write_atomically: a file replaced whole or not at all, and the places where it cannot be.

The export and ``LocalClassifier.save`` tests cover the usual path (tests/finops/
test_export_command.py, tests/test_classify.py). These cover the names that are descriptors
(``/dev/stdout`` in a pipe or appended to a log), the file systems that refuse a rename,
the file's mode, and errors that are not the write's.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import outfiles
from chainkit.errors import ConfigError
from chainkit.outfiles import write_atomically
from tests.outfiles_support import refuse_rename

ROOT = Path(__file__).resolve().parents[1]
WRITE = """
import sys
from chainkit.outfiles import write_atomically
print("before", flush=True)
with write_atomically(sys.argv[1]) as f:
    f.write("NEW CONTENT\\n")
"""
linux = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")


def run(target: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", WRITE, target], cwd=ROOT, stderr=subprocess.PIPE, **kwargs
    )


@linux
def test_dev_stdout_into_a_pipe_is_written_to_the_pipe_after_what_python_printed() -> None:
    done = run("/dev/stdout", stdout=subprocess.PIPE)

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"before\nNEW CONTENT\n"


@linux
def test_dev_stdout_appended_to_a_log_keeps_the_log(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("yesterday's line\n", encoding="utf-8")

    with log.open("a", encoding="utf-8") as out:
        done = run("/dev/stdout", stdout=out)

    assert done.returncode == 0, done.stderr.decode()
    assert log.read_text(encoding="utf-8") == "yesterday's line\nbefore\nNEW CONTENT\n"


@linux
@pytest.mark.parametrize("name", ["/dev/fd/{fd}", "/proc/self/fd/{fd}"])
def test_the_descriptor_of_an_unlinked_file_is_written_through(tmp_path: Path, name: str) -> None:
    rotated = tmp_path / "rot.log"
    fd = os.open(rotated, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        rotated.unlink()
        done = run(name.format(fd=fd), pass_fds=(fd,), stdout=subprocess.DEVNULL)
        written = os.pread(fd, 100, 0)
    finally:
        os.close(fd)

    assert done.returncode == 0, done.stderr.decode()
    assert list(tmp_path.iterdir()) == []  # no file named "rot.log (deleted)"
    assert written == b"NEW CONTENT\n"


def test_a_closed_descriptor_is_one_clear_error() -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.close(fd)
    with (
        pytest.raises(ConfigError, match=rf"Could not write '/dev/fd/{fd}' \(OSError: Bad file"),
        write_atomically(f"/dev/fd/{fd}") as f,
    ):
        f.write("x")


@pytest.mark.parametrize(
    ("out", "said"),
    [
        (b"/tmp/x.csv", "is not a file path"),
        ("", "is not a file path"),
        ("out\0.csv", "holds a NUL character"),
        ("out.csv/", "names a directory"),
    ],
)
def test_a_bad_path_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: object, said: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=said), write_atomically(out) as f:  # type: ignore[arg-type]
        f.write("x")
    assert list(tmp_path.iterdir()) == []


def test_a_trailing_slash_never_replaces_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("kept\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="names a directory"), write_atomically(f"{out}/") as f:
        f.write("x")
    assert out.read_text(encoding="utf-8") == "kept\n"


def test_an_oserror_about_another_file_is_the_callers_and_passes_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("kept\n", encoding="utf-8")
    missing = tmp_path / "input.jsonl"
    with pytest.raises(FileNotFoundError) as raised, write_atomically(out) as f:
        f.write("half")
        missing.read_text(encoding="utf-8")
    assert raised.value.filename == str(missing)
    assert out.read_text(encoding="utf-8") == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


@pytest.mark.parametrize(
    ("code", "advice"),
    [(errno.ENOSPC, "Free space, or give another --out."), (errno.EIO, "Give another --out.")],
)
def test_the_advice_fits_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, advice: str
) -> None:
    def fail(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ConfigError) as raised, write_atomically(tmp_path / "out.csv") as f:
        f.write("x")
    assert str(raised.value).endswith(f"nothing was written there. {advice}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("refused", [errno.EBUSY, errno.EPERM])
def test_a_file_that_cannot_be_renamed_over_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: int
) -> None:
    # A file bind-mounted over another refuses the rename (EBUSY); so does another user's
    # file in a sticky directory such as /tmp (EPERM). open() would write either.
    out = tmp_path / "mounted.csv"
    out.write_text("the previous export, longer than the new one\n", encoding="utf-8")
    inode = out.stat().st_ino

    monkeypatch.setattr(os, "replace", refuse_rename(refused))
    with write_atomically(out) as f:
        f.write("日本語 😀\n")

    assert out.read_text(encoding="utf-8") == "日本語 😀\n"
    assert out.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted.csv"]


def test_a_directory_that_takes_no_new_file_gets_the_existing_file_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.csv"
    out.write_text("old\n", encoding="utf-8")

    def refuse(**kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path))

    monkeypatch.setattr(outfiles.tempfile, "mkstemp", refuse)
    with write_atomically(out) as f:
        f.write("new\n")
    assert out.read_text(encoding="utf-8") == "new\n"
    with (
        pytest.raises(ConfigError, match=r"Could not write .*new\.csv.*Permission denied"),
        write_atomically(tmp_path / "new.csv") as f,
    ):
        f.write("x")


def test_setuid_and_setgid_bits_are_not_carried_over(tmp_path: Path) -> None:
    out = tmp_path / "tool"
    out.write_text("old\n", encoding="utf-8")
    out.chmod(0o6755)
    with write_atomically(out) as f:
        f.write("new\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a read-only file")
def test_a_read_only_file_is_refused_as_open_refuses_it(tmp_path: Path) -> None:
    out = tmp_path / "locked.csv"
    out.write_text("kept\n", encoding="utf-8")
    out.chmod(0o444)
    with pytest.raises(ConfigError, match="Permission denied"), write_atomically(out) as f:
        f.write("x")
    assert out.read_text(encoding="utf-8") == "kept\n"


def test_the_umask_is_read_without_being_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = os.umask(0o027)
    os.umask(0o027)
    try:

        def refuse(mask: int) -> int:
            raise AssertionError("os.umask was called: other threads would see umask 0")

        if Path("/proc/self/status").exists():
            monkeypatch.setattr(os, "umask", refuse)
        assert outfiles._umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(expected)


FAULTS = ["none", "fsync", "fchmod", "replace", "body"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(new=st.text(max_size=300), fault=st.sampled_from(FAULTS), exists=st.booleans())
def test_the_file_is_the_old_one_or_the_new_one_whole(
    tmp_path_factory: pytest.TempPathFactory, new: str, fault: str, exists: bool
) -> None:
    """Whatever fails, and text that cannot be encoded (a lone surrogate) is a failure too."""
    directory = tmp_path_factory.mktemp("out")
    out = directory / "out.csv"
    if exists:
        out.write_text("the old content 日本\n", encoding="utf-8")
    before = out.read_bytes() if exists else None
    real = {name: getattr(os, name) for name in ("fsync", "fchmod", "replace")}

    def failing(name: str) -> object:
        def fail(*args: object) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        return fail if name == fault else real[name]

    try:
        for name in real:
            setattr(os, name, failing(name))
        with write_atomically(out) as f:
            f.write(new)
            if fault == "body":
                raise KeyboardInterrupt
        wrote = True
    except (ConfigError, UnicodeEncodeError, KeyboardInterrupt):
        wrote = False
    finally:
        for name, function in real.items():
            setattr(os, name, function)

    if wrote:
        assert out.read_bytes() == new.encode("utf-8")
    else:
        assert (out.read_bytes() if out.exists() else None) == before
    assert [p.name for p in directory.iterdir()] == (["out.csv"] if exists or wrote else [])


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
fcntl.lockf(fd, fcntl.LOCK_EX)  # another process, midway through its in-place write
print("holding", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(not hasattr(os, "O_CLOEXEC"), reason="POSIX only")
def test_in_place_writers_in_other_processes_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    out = tmp_path / "mounted.csv"
    out.write_text("old\n", encoding="utf-8")

    monkeypatch.setattr(os, "replace", refuse_rename(errno.EBUSY))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    done = threading.Event()

    def write() -> None:
        with write_atomically(out) as f:
            f.write("new\n")
        done.set()

    writer = threading.Thread(target=write)
    try:
        assert holder.stdout.readline() == "holding\n"
        writer.start()
        assert not done.wait(0.5), "wrote over a file another process holds"
        assert out.read_text(encoding="utf-8") == "old\n"
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
        writer.join(10)
    assert done.is_set() and out.read_text(encoding="utf-8") == "new\n"


def test_a_descriptor_open_for_reading_only_is_refused_before_writing(tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("kept\n", encoding="utf-8")
    fd = os.open(source, os.O_RDONLY)
    try:
        with (
            pytest.raises(ConfigError, match=r"open for reading only.*nothing was written"),
            write_atomically(f"/dev/fd/{fd}") as f,
        ):
            f.write("x")
    finally:
        os.close(fd)
    assert source.read_text(encoding="utf-8") == "kept\n"


def test_a_pipe_nobody_reads_is_a_config_error_not_a_broken_pipe() -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        with (
            pytest.raises(ConfigError, match=r"BrokenPipeError.*output there may be incomplete"),
            write_atomically(f"/dev/fd/{write}") as f,
        ):
            f.write("x" * 100)
    finally:
        os.close(write)


def test_an_interrupted_in_place_copy_says_where_the_whole_content_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "mounted.csv"
    out.write_text("old\n", encoding="utf-8")

    def interrupted(source: object, target: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", refuse_rename(errno.EBUSY))
    monkeypatch.setattr(outfiles.shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised, write_atomically(out) as f:
        f.write("new\n")
    [note] = raised.value.__notes__
    kept = note.split(" is in ")[1].strip("'")
    assert Path(kept).read_text(encoding="utf-8") == "new\n"
