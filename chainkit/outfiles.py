"""Files a command writes: never over the ledger it reads, whole or not at all, CSV cells inert."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeGuard

from chainkit.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: in-place writers do not take turns there
    fcntl = None  # type: ignore[assignment]

__all__ = ["csv_safe", "refuse_ledger_as_out", "write_atomically"]


def refuse_ledger_as_out(ledger: str, out: str) -> None:
    """Refuse an ``--out`` that is the ledger file or one of SQLite's files beside it."""
    _out_path(out)
    if ledger.startswith(("postgresql://", "postgres://")):
        return
    files = [Path(ledger), *(Path(f"{ledger}{suffix}") for suffix in ("-wal", "-shm", "-journal"))]
    try:
        real = os.path.realpath(out)
    except OSError:  # a name this process may not resolve (/proc/1/fd/1): never the ledger's
        return
    try:
        out_stat: os.stat_result | None = os.stat(out)
    except OSError:
        out_stat = None
    for f in files:
        try:
            same = os.path.realpath(f) == real
        except OSError:  # a ledger name that no longer resolves (a deleted working directory)
            same = False
        if not same and out_stat is not None:
            try:
                st = os.stat(f)
            except OSError:
                continue
            # A hard link (or a bind mount) is the same file under another name.
            same = (st.st_dev, st.st_ino) == (out_stat.st_dev, out_stat.st_ino)
        if same:
            raise ConfigError(
                f"--out {out!r} is the ledger's own file ({f}): the export only reads the "
                "ledger and writing there would destroy it; give another --out."
            )


@contextlib.contextmanager
def write_atomically(
    out: str | os.PathLike[str],
    *,
    binary: bool = False,
    advice: str = "give another --out",
) -> Iterator[IO[Any]]:
    """A file to write ``out`` through: it replaces ``out`` only once complete and on disk.

    The data goes to a temporary file beside ``out`` (beside the file a symlink points to, so
    the link stays a link), is flushed and fsynced, then renamed over it: a reader never sees
    half a file, and a failure leaves ``out`` as it was and no temporary file. The new file
    keeps the replaced file's permission bits (not setuid/setgid) and, where the process may
    set them, its owner and group; a new file gets the mode ``open`` would give it. Other
    names of the old file (hard links) keep the old content, as with any rename.

    Where renaming cannot work, the file is written in place, as ``open`` would: a file
    bind-mounted over another (rename fails with EBUSY), another user's file in a sticky
    directory such as /tmp, a writable file in a directory that takes no new files. Writers
    through this function in different processes then take turns (an advisory lock; in one
    process they do not wait for each other, as ``open`` would not), and setuid/setgid are
    dropped there too. If that copy fails or is interrupted, the complete new content stays in
    its temporary file, which the error (or, for an interrupt, a note on the exception) names.

    A file descriptor's name (``/dev/stdout``, ``/dev/fd/3``, ``/proc/self/fd/3``, or a path
    that resolves to one) is written through that descriptor, where the shell pointed it (a
    pipe, ``>> log``); another process's descriptor, another device or a FIFO is opened by
    name and written directly, as ``open`` would.

    A failed write is a ConfigError naming the file, what is left there, and what to do:
    "Free space, or {advice}" when the disk is full, else "{advice}". An OSError raised by the
    caller's code inside the ``with`` block passes unchanged when it names another file, or is
    a socket's, a timeout, a process error or one a library defines (ConnectionError, whose
    broken pipe is the write's only where the output is a pipe; TimeoutError; socket.gaierror,
    ssl.SSLError). A process killed midway leaves its ``.chainkit-*.tmp`` file behind: nothing
    can tell it from another process's write still under way, so nothing removes it later.
    """
    path = _out_path(out)
    mode = "wb" if binary else "w"
    text: dict[str, Any] = {} if binary else {"encoding": "utf-8", "newline": ""}
    try:
        descriptor = _descriptor(path)
    except OSError as exc:
        raise _unwritable(path, exc, advice) from None
    if isinstance(descriptor, int):
        with _through(descriptor, path, mode, text, advice) as f:
            yield f
        return
    temp, target, how = "", path, "rename"
    try:
        if descriptor == "by name":
            raise _ByName
        target = os.path.realpath(path)
        try:
            old: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise _ByName  # a device or a FIFO
        if old is not None:
            _check_writable(target, path)
        try:
            # A short fixed name: the target's own name may already use all 255 bytes.
            fd, temp = tempfile.mkstemp(
                dir=os.path.dirname(target), prefix=".chainkit-", suffix=".tmp"
            )
        except OSError as exc:
            # procfs and sysfs answer a new file with ENOENT, though the directory is there:
            # their files are written by name, as open() writes them. (Elsewhere ENOENT is a
            # directory gone: an error, never a file written half.)
            pseudo = target.startswith(("/proc/", "/sys/"))
            if old is not None and exc.errno == errno.ENOENT and pseudo:
                raise _ByName from None
            if old is None or exc.errno not in _IN_PLACE:
                raise
            how = "in place"  # a directory that takes no new file
    except _ByName:
        how = "by name"  # opened and written directly, as open() would
    except OSError as exc:
        raise _unwritable(path, exc, advice) from None
    if how != "rename":
        regular = how == "in place"
        with _in_place(path, target if regular else path, mode, text, advice, regular=regular) as f:
            yield f
        return
    copying = in_body = False
    try:
        with os.fdopen(fd, mode, **text) as f:
            in_body = True
            yield f
            in_body = False  # from here every error is the write's: flush, fsync, rename
            f.flush()
            os.fsync(f.fileno())
            if old is not None:
                _keep_owner(f.fileno(), old)
            kept = 0o666 & ~_umask() if old is None else stat.S_IMODE(old.st_mode) & 0o777
            os.fchmod(f.fileno(), kept)  # mkstemp's 0600 was for the incomplete file
        try:
            os.replace(temp, target)
            temp = ""
        except OSError as exc:
            if old is None or exc.errno not in _IN_PLACE:
                raise
            # From here the target is being overwritten: the complete temporary file is kept
            # until the copy is whole, so a failure or an interrupt loses neither version.
            copying = True
            with (
                open(temp, "rb") as done,
                _in_place(path, target, "wb", {}, advice, regular=True, whole_in=temp) as f,
            ):
                shutil.copyfileobj(done, f)
            copying = False
            os.unlink(temp)
    except BaseException as exc:
        if copying:
            exc.add_note(f"the whole new content of {path!r} is in {temp!r}")
        elif temp:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError) and (not in_body or _ours(exc, path, target, temp)):
            raise _unwritable(path, exc, advice) from None
        raise


class _ByName(Exception):
    """The path is written by opening it, not by renaming a file over it."""


def _ours(exc: BaseException, *names: str, pipe: bool = False) -> TypeGuard[OSError]:
    """Whether an OSError raised inside the ``with`` block is the write's, not the caller's.

    (Errors after the block, at flush, fsync or rename, are always the write's.) Inside it the
    write's own errors name the file written, or no file: then they are Python's own OSErrors
    (ENOSPC, EIO, ...), or, where the output is a pipe, a socket or a FIFO, a ConnectionError.
    The caller's pass unchanged: errors about another file, socket errors and timeouts, and
    OSErrors that libraries define (socket.gaierror, ssl.SSLError).
    """
    if not isinstance(exc, OSError):
        return False
    if exc.filename is not None:
        return exc.filename in names
    if isinstance(exc, ConnectionError):
        return pipe
    if type(exc).__module__ != "builtins":
        return False
    return not isinstance(exc, TimeoutError | ProcessLookupError | ChildProcessError)


# Where a rename over the file, or a new file beside it, is refused but writing it is not:
# a bind mount (EBUSY), a sticky directory (EPERM), a directory without write permission.
_IN_PLACE = frozenset({errno.EBUSY, errno.EPERM, errno.EACCES, errno.EROFS, errno.EXDEV})
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}
# A descriptor's own name (no leading zeros: /proc has no "01"), in /proc or, elsewhere, /dev/fd.
_DESCRIPTOR = re.compile(r"/(?:dev|proc/(\d+)(?:/task/(\d+))?)/fd/(0|[1-9]\d*)")
_SET_ID = stat.S_ISUID | stat.S_ISGID
_LINKS = 40  # the most symlinks Linux follows in one path


def _out_path(out: object) -> str:
    """``out`` as a path string, or a ConfigError saying what is wrong with it."""
    path = os.fspath(out) if isinstance(out, str | os.PathLike) else out
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{out!r} is not a file path: give the path of the file to write.")
    if "\0" in path:
        raise ConfigError(f"{path!r} holds a NUL character, which no file name may hold.")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise ConfigError(
            f"{path!r} holds a character no file name can (a lone surrogate); give a file path."
        ) from None
    if path.endswith(("/", os.sep)) or os.path.basename(path) in (".", ".."):
        raise ConfigError(f"{path!r} names a directory: give a file path.")
    return path


def _descriptor(path: str) -> int | str | None:
    """The descriptor a name such as ``/dev/stdout`` or ``/dev/fd/3`` stands for, if any.

    The name is resolved as the kernel resolves it, component by component (``..`` after a
    symlink goes up from where the link points), stopping at a descriptor's own name: that
    "points" to ``pipe:[N]`` or to the file it has open, and is not followed. Returns the
    descriptor number, "by name" for another process's descriptor (opened by name, as
    ``open()`` would), or None. More than 40 links is ELOOP, as ``open()`` says.
    """
    if path in _STANDARD:
        return _STANDARD[path]
    pending = [part for part in reversed(path.split("/")) if part]
    resolved = "/" if path.startswith("/") else os.getcwd()
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        match = _DESCRIPTOR.fullmatch(candidate)
        if match and not pending:
            owner, task, number = match.groups()
            if owner is not None and not _this_process(int(owner)):
                return "by name"
            if task is not None and not _this_process(int(task)):
                return "by name"  # /proc/self/task/<another process's thread>: not ours
            return int(number)
        if candidate in _STANDARD and not pending and not os.path.islink(candidate):
            return _STANDARD[candidate]  # a system whose /dev/stdout is a device, not a link
        try:
            target = os.readlink(candidate)
        except OSError:  # not a link, or not there: an ordinary path from here on
            resolved = candidate
            continue
        links += 1
        if links > _LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        pending.extend(part for part in reversed(target.split("/")) if part)
        if target.startswith("/"):
            resolved = "/"
    return None


def _this_process(number: int) -> bool:
    """Whether /proc/<number> is this process, or one of its threads (which share its fds)."""
    pid = os.getpid()
    return number == pid or os.path.isdir(f"/proc/{pid}/task/{number}")


@contextlib.contextmanager
def _through(fd: int, path: str, mode: str, text: dict[str, Any], advice: str) -> Iterator[IO[Any]]:
    """Write through a duplicate of descriptor ``fd``: at its offset, in its append mode."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # what Python has buffered for the same descriptor goes first
    try:
        duplicate = os.dup(fd)
    except (OSError, OverflowError):
        bad = OSError(errno.EBADF, os.strerror(errno.EBADF))
        raise _unwritable(path, bad, advice) from None
    try:
        access = os.O_RDWR if fcntl is None else fcntl.fcntl(duplicate, fcntl.F_GETFL)
        if access & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "open for reading only")
        f = os.fdopen(duplicate, mode, **text)
    except OSError as exc:
        os.close(duplicate)
        raise _unwritable(path, exc, advice) from None
    in_body = True
    try:
        with f:
            yield f
            in_body = False  # the flush at close is the write's
    except OSError as exc:
        if in_body and not _ours(exc, path, pipe=True):
            raise
        raise _unwritable(path, exc, advice, left="the output there may be incomplete") from None


@contextlib.contextmanager
def _in_place(
    path: str,
    target: str,
    mode: str,
    text: dict[str, Any],
    advice: str,
    *,
    regular: bool,
    whole_in: str = "",
) -> Iterator[IO[Any]]:
    """Write ``target`` in place: a device, or a file no rename can replace.

    ``whole_in`` names a file holding the complete new content, for the error message.
    """
    kept = f"; the whole new content is in {whole_in!r}" if whole_in else ""
    try:
        if regular:
            # Opened without truncating: other writers through here take turns first, where
            # their bytes would otherwise interleave in one file.
            fd = os.open(target, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        else:
            f = open(target, mode, **text)  # noqa: SIM115 - closed below, after its writes
    except OSError as exc:
        raise _unwritable(path, exc, advice, left="nothing was written there" + kept) from None
    in_body = False
    try:
        if regular:
            try:
                _take_turn(fd)
                os.ftruncate(fd, 0)
                now = os.fstat(fd).st_mode
                if now & _SET_ID:
                    os.fchmod(fd, stat.S_IMODE(now) & ~_SET_ID)
                f = os.fdopen(fd, mode, **text)
            except BaseException:
                os.close(fd)
                raise
        with f:
            in_body = True
            yield f
            in_body = False  # from here every error is the write's: flush, fsync
            f.flush()
            if regular:
                os.fsync(f.fileno())
    except OSError as exc:
        # A FIFO or a device written by name may be a pipe: its reader leaving is ours.
        if in_body and not _ours(exc, path, target, pipe=not regular):
            raise
        left = "the file there may now be incomplete" + kept
        raise _unwritable(path, exc, advice, left=left) from None


def _take_turn(fd: int) -> None:
    """Wait for this process's turn at the file open on ``fd``, against other processes'.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to the process, so a forked
    child never inherits a parent's turn it could not give back, and writers in one process
    never wait for each other (as ``open`` would not; waiting there could only deadlock: a
    writer of the file inside another's block, two threads nesting two files in opposite
    orders). It is released when the file is closed, and, as POSIX has it, when this
    process closes any other descriptor of the same file (reading it back inside the block
    ends the turn early). Where the file system has no record locks, or taking one would
    deadlock, the write goes on without its turn, as ``open``'s would.
    """
    if fcntl is not None:
        # No record locks there (ENOLCK, EINVAL) or a deadlock: write as open would.
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_EX)


def _check_writable(target: str, path: str) -> None:
    """Refuse a file ``open`` would refuse to write (mode 0444, a read-only file system)."""
    if os.access(target, os.W_OK):
        return
    read_only = False
    with contextlib.suppress(OSError, AttributeError):
        read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
    code = errno.EROFS if read_only else errno.EACCES
    raise OSError(code, os.strerror(code), path)


def _keep_owner(fd: int, old: os.stat_result) -> None:
    """Give the new file the old one's owner and group, or its group alone, where allowed."""
    try:
        os.fchown(fd, old.st_uid, old.st_gid)  # only root may give a file to another user
    except OSError:
        with contextlib.suppress(OSError):
            os.fchown(fd, -1, old.st_gid)  # a member of the group may keep it


def _umask() -> int:
    """The process's umask, read without setting it where Linux allows.

    ``os.umask(0)`` would open a moment in which another thread creates world-writable files.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)  # the safe side while the old value is being read
    os.umask(umask)
    return umask


def _unwritable(
    path: str, exc: OSError, advice: str, *, left: str = "nothing was written there"
) -> ConfigError:
    """The one-line error: the path, the cause, what is left there, what to do."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    todo = f"Free space, or {advice}" if full else advice[:1].upper() + advice[1:]
    return ConfigError(
        f"Could not write {path!r} ({type(exc).__name__}: {exc.strerror or exc}); {left}. {todo}."
    )


_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


def csv_safe(cell: object, *, text: bool = False) -> str:
    """A CSV cell a spreadsheet will not run: text starting ``= + - @`` gets a leading ``'``.

    Numbers (``-0.25``) are left as they are, unless ``text`` says the column holds identifiers
    ("+1" as an id). Model ids, tags and notes come from a ledger or a log anyone may write to,
    and a spreadsheet would take ``=HYPERLINK(...)`` for a formula (OWASP, "CSV Injection").

    >>> csv_safe("=1+1"), csv_safe("-0.25"), csv_safe("amazon.nova-micro-v1:0")
    ("'=1+1", '-0.25', 'amazon.nova-micro-v1:0')
    """
    value = str(cell)
    # An identifier column (``text=True``) is text even where it reads as a number ("+1").
    if value.startswith(_FORMULA) and (text or not _NUMBER.match(value)):
        return "'" + value
    return value
