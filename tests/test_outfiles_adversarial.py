"""Adversarial tests of write_atomically (chainkit/outfiles.py), each failing at 103a935.

* a bad path is a ConfigError, but a path with a lone surrogate raises UnicodeEncodeError, and
  ``missing/.`` (a directory name, which ``open`` refuses) creates a file named ``missing``;
* a descriptor's name is written through the descriptor, but a symlink to ``/dev/stdout``,
  ``/proc/<own pid>/fd/1`` and ``//dev/stdout`` (normpath keeps a leading ``//``) are not:
  the file stdout was appended to is replaced by a new file (its old lines lost, the
  process's later output going to an unlinked inode), and a pipe is a FileNotFoundError;
* a descriptor write that fails midway says "nothing was written there" when part was;
* an ``open`` that fails before writing anything says "the file there may now be incomplete";
* setuid/setgid bits are dropped, but not on the in-place fallback (a rename refused with
  EBUSY, as over a bind mount) when the process may keep them (root);
* the owner and group are kept where the process may set them, but one ``fchown(uid, gid)``
  that fails for the owner drops the group too, though the process may keep it;
* an in-place copy interrupted midway leaves the target truncated and deletes the only whole
  copy of the new content.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from chainkit.errors import ConfigError
from chainkit.outfiles import write_atomically
from tests.outfiles_support import refuse_rename

ROOT = Path(__file__).resolve().parents[1]
WRITE = """
import sys
import tempfile
from chainkit.outfiles import write_atomically
print("before", flush=True)
with write_atomically(sys.argv[1]) as f:
    f.write("NEW CONTENT\\n")
print("after", flush=True)
"""
linux = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")


def test_a_path_with_a_lone_surrogate_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError), write_atomically("out\ud800.csv") as f:
        f.write("x")


def test_a_dot_after_a_missing_directory_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError):
        open("missing/.", "w")  # noqa: SIM115  (what open does with the name)
    with pytest.raises(ConfigError), write_atomically("missing/.") as f:
        f.write("x")
    assert list(tmp_path.iterdir()) == []


@linux
@pytest.mark.parametrize("kind", ["symlink", "own pid", "double slash"])
def test_other_names_of_stdout_appended_to_a_log_keep_the_log(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "app.log"
    log.write_text("yesterday's line\n", encoding="utf-8")
    link = tmp_path / "out"
    link.symlink_to("/dev/stdout")
    target = {"symlink": str(link), "own pid": "/proc/{pid}/fd/1"}.get(kind, "//dev/stdout")
    script = WRITE.replace("sys.argv[1]", "sys.argv[1].format(pid=__import__('os').getpid())")

    with log.open("a", encoding="utf-8") as out:
        done = subprocess.run(
            [sys.executable, "-c", script, target],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )

    assert done.returncode == 0, done.stderr.decode()
    assert log.read_text(encoding="utf-8") == "yesterday's line\nbefore\nNEW CONTENT\nafter\n"


@linux
@pytest.mark.parametrize("kind", ["symlink", "own pid", "double slash"])
def test_other_names_of_stdout_in_a_pipe_are_written_to_the_pipe(kind: str, tmp_path: Path) -> None:
    link = tmp_path / "out"
    link.symlink_to("/dev/stdout")
    target = {"symlink": str(link), "own pid": "/proc/{pid}/fd/1"}.get(kind, "//dev/stdout")
    script = WRITE.replace("sys.argv[1]", "sys.argv[1].format(pid=__import__('os').getpid())")
    done = subprocess.run(
        [sys.executable, "-c", script, target],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"before\nNEW CONTENT\nafter\n"


PARTIAL = """
import os, resource, signal, sys
from chainkit.errors import ConfigError
from chainkit.outfiles import write_atomically
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
try:
    with write_atomically(f"/dev/fd/{fd}", binary=True) as f:
        for _ in range(40):
            f.write(b"x" * 10_000)
except ConfigError as exc:
    print(exc)
"""


@linux
def test_a_descriptor_write_that_fails_midway_does_not_say_nothing_was_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "big.bin"
    done = subprocess.run(
        [sys.executable, "-c", PARTIAL, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == 100_000  # the first 100 kB went through
    assert "Could not write" in done.stdout
    assert "nothing was written there" not in done.stdout, done.stdout


def test_a_directory_as_out_does_not_say_a_file_may_be_incomplete(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised, write_atomically(tmp_path) as f:
        f.write("x")
    # open() failed: nothing was written, and there is no file there to be incomplete.
    assert "may now be incomplete" not in str(raised.value), str(raised.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel drops the bits for other users")
def test_setuid_and_setgid_are_dropped_on_the_in_place_fallback_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tool"
    out.write_text("old\n", encoding="utf-8")
    out.chmod(0o6755)
    monkeypatch.setattr(os, "replace", refuse_rename(errno.EBUSY))  # as over a bind mount
    with write_atomically(out) as f:
        f.write("new\n")
    assert out.read_text(encoding="utf-8") == "new\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_an_interrupted_in_place_copy_keeps_a_whole_copy_somewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "mounted.csv"
    out.write_text("the previous export\n", encoding="utf-8")
    monkeypatch.setattr(os, "replace", refuse_rename(errno.EBUSY))  # as over a bind mount

    def interrupted(src: Any, dst: Any, length: int = 0) -> None:
        dst.write(src.read(4))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt), write_atomically(out) as f:
        f.write("the new export, complete\n")

    # Ctrl-C during the copy: the target holds "the " and the old export is gone. The whole
    # new content was on disk in the temporary file, which was deleted: nothing is whole.
    whole = {"the previous export\n", "the new export, complete\n"}
    contents = {p.read_text(encoding="utf-8") for p in tmp_path.iterdir()}
    assert contents & whole, contents


SHARED = """
import os, sys
from chainkit.outfiles import write_atomically
os.setgroups([5678])
os.setgid(65534)
os.setuid(65534)
with write_atomically(sys.argv[1]) as f:
    f.write("new\\n")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play two users")
def test_the_group_is_kept_where_the_process_may_set_it(tmp_path: Path) -> None:
    # A shared, world-writable directory; user 1234's report, group 5678, mode 0664. Another
    # member of group 5678 writes it: it may not give the file to 1234, but it may keep the
    # group (chgrp to a group of its own is allowed). With the group lost as well, 1234
    # can no longer write its own report (it is now "other": r--).
    shared = Path(tempfile.mkdtemp(prefix="attack4-"))  # tmp_path's parents are 0700
    try:
        shared.chmod(0o777)
        out = shared / "report.csv"
        out.write_text("old\n", encoding="utf-8")
        os.chown(out, 1234, 5678)
        out.chmod(0o664)
        done = subprocess.run(
            [sys.executable, "-c", SHARED, str(out)], cwd=ROOT, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        assert out.read_text(encoding="utf-8") == "new\n"
        assert out.stat().st_gid == 5678
    finally:
        shutil.rmtree(shared)
