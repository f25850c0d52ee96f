"""Files a command writes: never over the ledger it reads, whole or not at all, CSV cells inert."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from chainkit.errors import ConfigError

__all__ = ["csv_safe", "refuse_ledger_as_out", "write_atomically"]


def refuse_ledger_as_out(ledger: str, out: str) -> None:
    """Refuse an ``--out`` that is the ledger file or one of SQLite's files beside it."""
    if ledger.startswith(("postgresql://", "postgres://")):
        return
    files = [Path(ledger), *(Path(f"{ledger}{suffix}") for suffix in ("-wal", "-shm", "-journal"))]
    real = os.path.realpath(out)
    try:
        out_stat: os.stat_result | None = os.stat(out)
    except OSError:
        out_stat = None
    for f in files:
        same = os.path.realpath(f) == real
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
    advice: str = "Free space, or give another --out.",
) -> Iterator[IO[Any]]:
    """A file to write ``out`` through: it replaces ``out`` only once complete and on disk.

    The data goes to a temporary file beside ``out`` (beside the file a symlink points to, so
    the link stays a link), is flushed and fsynced, then renamed over it: a reader never sees
    half a file, and a failure leaves ``out`` as it was and no temporary file. The new file
    keeps the mode of the one it replaces, or gets the mode ``open`` would give it. A device or
    pipe (``/dev/stdout``) is written directly. A failed write (a full disk, a missing
    directory) is a ConfigError naming the file and ending with ``advice``.

    A process killed midway leaves its ``.chainkit-*.tmp`` file behind: nothing can tell it
    from another process's write still under way, so nothing removes it later.
    """
    path = os.fspath(out)
    mode = "wb" if binary else "w"
    text: dict[str, Any] = {} if binary else {"encoding": "utf-8", "newline": ""}
    try:
        target = os.path.realpath(path)
        if os.path.exists(target) and not os.path.isfile(target):
            with open(target, mode, **text) as f:
                yield f
            return
        # A short fixed name: the target's own name may already use all 255 bytes.
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".chainkit-", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, exc, advice) from None
    try:
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            kept = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            kept = 0o666 & ~_umask()
        os.chmod(temp, kept)  # mkstemp's 0600 is for the temporary file only
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _unwritable(path, exc, advice) from None
        raise


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


def _unwritable(path: str, exc: OSError, advice: str) -> ConfigError:
    return ConfigError(
        f"Could not write {path!r} ({type(exc).__name__}: {exc.strerror or exc}); nothing was "
        f"written there. {advice}"
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
