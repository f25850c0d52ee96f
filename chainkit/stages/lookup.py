"""Lookup: put the facts a request needs onto it, from an SQLite database, at no model cost."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.records import Request
from chainkit.stages.answering import record_free

__all__ = ["FactRule", "Lookup"]


@dataclass(frozen=True)
class FactRule:
    """Find a value in the request's text, query the database with it, word the rows as facts.

    Args:
        slot: the name the found value is kept under in ``request.slots``.
        pattern: a regular expression whose first group is the value (searched, case-insensitive).
        sql: a query taking the value as its one ``?`` parameter.
        fact: a ``str.format`` template applied to each row (columns by name).
        missing: the fact stated when the query returns nothing (``{value}`` is the value).
        normalise: turns the matched text into the query parameter (e.g. strip leading zeros).
        intents: only for requests with one of these intents (empty: any request).
    """

    slot: str
    pattern: str
    sql: str
    fact: str
    missing: str = "No record was found for {value}."
    normalise: Callable[[str], str | int] = str
    intents: tuple[str, ...] = ()
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(
                f"FactRule {self.slot!r}: bad pattern {self.pattern!r}: {exc}."
            ) from exc
        if regex.groups < 1:
            raise ConfigError(
                f"FactRule {self.slot!r}: pattern {self.pattern!r} needs a group around the value."
            )
        object.__setattr__(self, "_regex", regex)

    def find(self, text: str) -> str | None:
        """The value in ``text``, or ``None``."""
        match = self._regex.search(text)
        return None if match is None else match.group(1)


class Lookup:
    """Add facts from an SQLite database to each request; free, and recorded like any stage.

    The database is opened read-only, one connection per thread, so the batch runner can share
    the stage across threads.
    """

    def __init__(
        self, database: str | Path, rules: Sequence[FactRule], *, name: str = "lookup"
    ) -> None:
        self.database = Path(database)
        if not self.database.is_file():
            raise ConfigError(f"Lookup database {self.database} does not exist.")
        if not rules:
            raise ConfigError("Lookup needs at least one FactRule.")
        self.rules = tuple(rules)
        self.name = name
        self._local = threading.local()
        # Check every query against the schema now rather than on the first request.
        db = self._db()
        for rule in self.rules:
            try:
                db.execute(f"EXPLAIN {rule.sql}", (None,))
            except sqlite3.Error as exc:
                raise ConfigError(
                    f"FactRule {rule.slot!r}: query {rule.sql!r} fails on {self.database}: {exc}."
                ) from exc

    def __repr__(self) -> str:
        return f"Lookup({str(self.database)!r}, slots={[r.slot for r in self.rules]})"

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # as_uri() quotes '#', '?' and '%', which SQLite would otherwise read as URI syntax.
            db = sqlite3.connect(self.database.resolve().as_uri() + "?mode=ro", uri=True)
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    def run(self, request: Request, ledger: Ledger) -> Request:
        """Return the request with the facts and slots every matching rule found."""
        started = time.perf_counter()
        facts = list(request.facts)
        slots = dict(request.slots)
        for rule in self.rules:
            if rule.intents and request.intent not in rule.intents:
                continue
            value = rule.find(request.text)
            if value is None:
                continue
            slots[rule.slot] = value
            rows = self._db().execute(rule.sql, (rule.normalise(value),)).fetchall()
            if rows:
                facts.extend(rule.fact.format(**dict(row)) for row in rows)
            else:
                facts.append(rule.missing.format(value=value))
        record_free(self.name, request, ledger, started=started)
        if len(facts) == len(request.facts) and slots == request.slots:
            return request
        return dataclasses.replace(request, facts=tuple(facts), slots=slots)
