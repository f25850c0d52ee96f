"""Adversarial tests of ``write_atomically`` (chainkit/outfiles.py), fifth round.

Each test states a promise of the docstring that an adversarial test found broken at beb10d1:

* a name of a descriptor "or a symlink to one" is written through that descriptor, but
  ``_descriptor`` collapses ``..`` lexically before resolving the symlinked directory in front
  of it, and gives up after 40 links where ``realpath`` does not: the shell's ``>> log`` is
  replaced by the export (the log's earlier lines are lost) and a pipe gets a ConfigError;
* another process's descriptor is "opened by name, as open() would", but a pipe there is
  resolved to ``/proc/<pid>/fd/pipe:[N]`` and refused, and a deleted file there makes a new
  file named ``<name> (deleted)``;
* every failure is a ConfigError naming the file, but ``/dev/fd/N`` of a directory raises
  IsADirectoryError (and leaks the duplicated descriptor), and a descriptor number too large
  for a C int raises OverflowError;
* the caller's own errors pass unchanged, but an OSError without a file name raised by the
  caller (a network error while producing the rows) becomes "Could not write <out>";
* in-place writers "take turns", but two of them in one process wait on each other forever.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from chainkit.errors import ConfigError
from chainkit.outfiles import write_atomically
from tests.outfiles_support import python

ROOT = Path(__file__).resolve().parents[1]
linux = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")

WRITE = """
import sys
from chainkit.outfiles import write_atomically
print("before", flush=True)
with write_atomically(sys.argv[1]) as f:
    f.write("NEW CONTENT\\n")
print("after", flush=True)
"""


def dotdot_name(tmp_path: Path) -> str:
    """``<tmp>/devlink/../dev/stdout`` with devlink -> /dev: the kernel reads /dev/stdout."""
    (tmp_path / "devlink").symlink_to("/dev")
    name = str(tmp_path / "devlink" / ".." / "dev" / "stdout")
    assert os.path.samefile(name, "/dev/stdout")
    return name


def chain_name(tmp_path: Path, links: int = 41) -> str:
    """A chain of ``links`` symlinks ending at /dev/stdout (open() refuses it: ELOOP)."""
    previous = "/dev/stdout"
    for i in range(links):
        link = tmp_path / f"link{i}"
        link.symlink_to(previous)
        previous = str(link)
    return previous


@linux
def test_a_name_of_stdout_with_dotdot_after_a_symlink_keeps_an_appended_log(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("yesterday's line\n", encoding="utf-8")
    with log.open("a", encoding="utf-8") as out:
        done = subprocess.run(
            [sys.executable, "-c", WRITE, dotdot_name(tmp_path)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    # Found: the log was renamed over and holds "NEW CONTENT\n" alone.
    assert log.read_text(encoding="utf-8") == "yesterday's line\nbefore\nNEW CONTENT\nafter\n"


@linux
def test_a_name_of_stdout_with_dotdot_after_a_symlink_writes_to_the_pipe(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRITE, dotdot_name(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    # Found: ConfigError "Could not write ... (FileNotFoundError ...)", exit 1.
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"before\nNEW CONTENT\nafter\n"


@linux
def test_a_chain_of_more_links_than_open_follows_does_not_replace_the_log(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("yesterday's line\n", encoding="utf-8")
    name = chain_name(tmp_path)
    with pytest.raises(OSError):
        open(name, "a").close()  # what open() does with the name: ELOOP
    with log.open("a", encoding="utf-8") as out:
        subprocess.run(
            [sys.executable, "-c", WRITE, name],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    # Either refused like open() or written through stdout: the log's old line must survive.
    # Found: _descriptor gives up after 40 links, realpath follows on to the log and the
    # export is renamed over it.
    assert log.read_text(encoding="utf-8").startswith("yesterday's line\nbefore\n")


@linux
def test_another_process_pipe_descriptor_is_written_as_open_would() -> None:
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        name = f"/proc/{cat.pid}/fd/0"
        # Found: ConfigError "Could not write '/proc/<pid>/fd/0' (FileNotFoundError ...)":
        # realpath turned the name into /proc/<pid>/fd/pipe:[N].
        with write_atomically(name) as f:
            f.write("through the pipe\n")
    finally:
        assert cat.stdin is not None and cat.stdout is not None
        cat.stdin.close()
        got = cat.stdout.read()
        cat.stdout.close()
        cat.wait(timeout=10)
    assert got == b"through the pipe\n"


@linux
def test_another_process_deleted_file_descriptor_creates_no_new_file(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch.log"
    holder = subprocess.Popen(
        ["sh", "-c", 'exec 3>"$1"; rm "$1"; echo ready; exec sleep 60', "sh", str(scratch)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        with write_atomically(f"/proc/{holder.pid}/fd/3") as f:
            f.write("x\n")
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    # open() by name writes into the deleted file the descriptor holds. Found: realpath reads
    # the magic link as "<tmp>/scratch.log (deleted)" and a new file of that name appears.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@linux
def test_a_directory_descriptor_is_a_config_error_and_leaks_no_descriptor(
    tmp_path: Path,
) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        before = open_descriptors()
        # Found: IsADirectoryError("[Errno 21] Is a directory: 4"), and the os.dup of the
        # descriptor is never closed.
        with pytest.raises(ConfigError) as raised, write_atomically(f"/dev/fd/{fd}") as f:
            f.write("x")
        assert f"/dev/fd/{fd}" in str(raised.value)
        assert open_descriptors() == before
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["/dev/fd/99999999999999999999", "/proc/self/fd/4294967297"])
def test_a_descriptor_number_too_large_is_a_config_error(name: str) -> None:
    # Found: OverflowError("Python int too large to convert to C int") from os.dup.
    with pytest.raises(ConfigError) as raised, write_atomically(name) as f:
        f.write("x")
    assert name in str(raised.value)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("read timed out"),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        socket.herror(1, "Unknown host"),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ProcessLookupError(3, "No such process"),
    ],
    ids=["connection reset", "timeout", "gaierror", "herror", "SSLEOFError", "no process"],
)
def test_the_callers_own_oserror_without_a_file_name_passes_unchanged(
    tmp_path: Path, error: OSError
) -> None:
    out = tmp_path / "out.csv"
    # Found: ConfigError "Could not write '.../out.csv' (ConnectionResetError: ...); nothing
    # was written there. Give another --out." The output file was fine; another --out would
    # not help, and a caller catching ConnectionError to retry never sees it.
    with pytest.raises(type(error)), write_atomically(out) as f:
        f.write("header\n")
        raise error
    assert not out.exists()


NESTED = """
import errno, os, sys, tempfile
from chainkit.outfiles import write_atomically

def no_new_files(*args, **kwargs):  # as in a directory the process may not add files to
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

tempfile.mkstemp = no_new_files
with write_atomically(sys.argv[1]) as first:
    first.write("first\\n")
    with write_atomically(sys.argv[1]) as second:
        second.write("second\\n")
print("done", flush=True)
"""


@linux
def test_two_in_place_writers_in_one_process_do_not_deadlock(tmp_path: Path) -> None:
    # Reproduced for real (no patching) in /tmp/attack5/nested.py: user nobody writing its
    # own file in a root-owned directory. Each writer flocks its own open file description,
    # so the second waits for the first, which waits for the second to return.
    out = tmp_path / "report.csv"
    out.write_text("old\n", encoding="utf-8")
    done = python(NESTED, str(out), timeout=20)
    # Either finishes or refuses with a ConfigError; hanging is what was found.
    assert done.returncode == 0 or "ConfigError" in done.stderr, done.stderr
