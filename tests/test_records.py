"""Records: Usage validation and arithmetic, frozen records, request ids."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from chainkit import ConfigError, Entry, Request, Result, Usage
from chainkit.records import new_request_id

FIELDS = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]


@pytest.mark.parametrize("name", FIELDS)
def test_usage_rejects_negative_count_naming_the_field(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"Usage\.{name} .*got -1"):
        Usage(**{name: -1})


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("value", [1.5, "3", True, None, Decimal(2)])
def test_usage_rejects_non_int_naming_field_and_value(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Usage(**{name: value})  # type: ignore[arg-type]
    assert f"Usage.{name}" in str(info.value)
    assert repr(value) in str(info.value)


def test_usage_defaults_to_zero() -> None:
    assert Usage() == Usage(0, 0, 0, 0)
    assert Usage().total_tokens == 0


def test_usage_total_tokens_counts_every_class() -> None:
    assert Usage(11_000, 4_000, 300, 20).total_tokens == 15_320


def test_usage_addition_adds_each_class() -> None:
    total = Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40)
    assert total == Usage(11, 22, 33, 44)
    assert total.total_tokens == 110


def test_usage_is_frozen() -> None:
    usage = Usage(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.input_tokens = 5  # type: ignore[misc]


def test_request_is_frozen_and_changed_only_by_replace() -> None:
    request = Request("hello")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.intent = "greeting"  # type: ignore[misc]
    changed = dataclasses.replace(request, intent="greeting")
    assert (changed.intent, changed.id, request.intent) == ("greeting", request.id, None)


def test_entry_is_frozen() -> None:
    entry = Entry(request_id="r1", stage="canned", outcome="answered", cost=Decimal(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.cost = Decimal(1)  # type: ignore[misc]


def test_result_is_frozen() -> None:
    result = Result(Request("hi"), "Hello!", stage="canned")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.text = "changed"  # type: ignore[misc]


def test_entry_defaults_free_avoidance_serve_phase_and_utc_time() -> None:
    entry = Entry(request_id="r1", stage="canned", outcome="answered", cost=Decimal(0))
    assert entry.avoided_cost == Decimal(0)
    assert entry.phase == "serve"
    assert entry.time.utcoffset() is not None
    assert entry.time.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_new_request_id_unique_over_10k_calls() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == 10_000


def test_new_request_ids_sort_in_creation_order() -> None:
    ids = [new_request_id() for _ in range(1_000)]
    assert sorted(ids) == ids


def test_requests_get_distinct_ids_and_tags() -> None:
    first, second = Request("a"), Request("b")
    assert first.id != second.id
    assert first.tags is not second.tags


# -- everything is checked where it enters, never inside a write ---------------------------------


def _entry(**fields: object) -> Entry:
    base: dict[str, object] = {
        "request_id": "r1",
        "stage": "generate",
        "outcome": "answered",
        "cost": Decimal("0.01"),
    }
    base.update(fields)
    return Entry(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cost": Decimal(-1)}, "is negative"),
        ({"cost": Decimal("Infinity")}, "not finite"),
        ({"cost": Decimal("NaN")}, "not finite"),
        ({"cost": 0.1}, "is a float"),
        ({"avoided_cost": 1}, "is a int"),
        ({"bound": Decimal("1e13")}, "over"),
        ({"cost": Decimal("1e-30")}, "decimal places"),
        ({"outcome": "bogus"}, "outcome 'bogus'"),
        ({"phase": "later"}, "phase 'later'"),
        ({"request_id": "a\ud800"}, "lone surrogate U\\+D800 at position 1"),
        ({"stage": "x\udfff"}, "lone surrogate"),
        ({"stage": ""}, "must not be empty"),
        ({"request_id": "a" * 257}, "257 characters"),
        ({"model": "m\x00"}, "NUL"),
        ({"tags": {"t\ud800": "a"}}, "tag key"),
        ({"tags": {"tenant": "\udc80"}}, "tag 'tenant' value"),
        ({"tags": {f"k{i}": "v" for i in range(65)}}, "65 tags"),
        ({"latency_s": float("nan")}, "latency_s"),
        ({"latency_s": -1.0}, "latency_s"),
        ({"attempts": -1}, "attempts"),
        ({"time": __import__("datetime").datetime(2026, 1, 1)}, "timezone-aware"),
        ({"flags": ("made_up",)}, "flags"),
    ],
)
def test_a_bad_entry_is_refused_where_it_is_made(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _entry(**fields)


def test_unicode_that_every_store_takes_is_accepted() -> None:
    e = _entry(request_id="注文-1 🚚", stage="日本語", tags={"région": "日本", "a\tb": "c\\d"})
    assert e.tags == {"région": "日本", "a\tb": "c\\d"}


def test_requests_check_text_ids_and_tags_before_any_stage_runs() -> None:
    with pytest.raises(ConfigError, match="Request text has a lone surrogate"):
        Request("hello \ud800 there")
    with pytest.raises(ConfigError, match="Request id"):
        Request("hi", id="")
    with pytest.raises(ConfigError, match="document"):
        Request("hi", document="doc \udc00")
    with pytest.raises(ConfigError, match="tag key"):
        Request("hi", tags={"": "x"})


def test_tags_are_read_only_and_shared_safely() -> None:
    request = Request("hi", tags={"tenant": "acme"})
    with pytest.raises(TypeError, match="read-only"):
        request.tags["tenant"] = "globex"  # type: ignore[index]
    assert {**request.tags, "tenant": "globex"} == {"tenant": "globex"}


def test_entry_ids_are_unique_and_differ_after_fork() -> None:
    import multiprocessing

    from chainkit.records import new_entry_id

    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    child = ctx.Process(target=lambda: queue.put([new_entry_id() for _ in range(100)]))
    child.start()
    theirs = queue.get()
    child.join()
    ours = [new_entry_id() for _ in range(100)]
    assert len(set(ours) | set(theirs)) == 200
