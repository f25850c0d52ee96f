"""Files a command writes: never over the ledger it reads, whole or not at all, CSV cells inert."""

from __future__ import annotations

import contextlib
import os
import re
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
def write_atomically(out: str | Path, *, binary: bool = False) -> Iterator[IO[Any]]:
    """A file to write ``out`` through: it replaces ``out`` only once complete and on disk.

    The data goes to a temporary file beside ``out``, is flushed and fsynced, then renamed over
    ``out`` (a reader never sees half a file; a failure leaves ``out`` as it was and no temporary
    file). A device or pipe (``/dev/stdout``) is written directly. A write that fails (a full
    disk) is a ConfigError naming the file.
    """
    path = Path(out)
    mode = "wb" if binary else "w"
    text: dict[str, Any] = {} if binary else {"encoding": "utf-8", "newline": ""}
    try:
        special = path.exists() and not path.is_file()
        if special:
            with open(path, mode, **text) as f:
                yield f
            return
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary file only
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _unwritable(path, exc) from None
        raise


def _unwritable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"Could not write {str(path)!r}: {exc.strerror or exc}; nothing was written there. "
        "Free space, or give another --out."
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
