"""Bedrock replies as raw HTTP: JSON bodies and AWS event-stream messages, for botocore to parse."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSResponse


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    # Header value type 7 is a UTF-8 string with a 2-byte length.
    return (
        struct.pack(">B", len(raw_name))
        + raw_name
        + struct.pack(">BH", 7, len(raw_value))
        + raw_value
    )


def encode_event(event: dict[str, Any]) -> bytes:
    """One ConverseStream event (``{"contentBlockDelta": {...}}``) as an event-stream message."""
    ((event_type, body),) = event.items()
    headers = (
        _header(":event-type", event_type)
        + _header(":content-type", "application/json")
        + _header(":message-type", "event")
    )
    payload = json.dumps(body).encode()
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


class _Raw:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, amt: int = 1024, decode_content: bool = True) -> Iterator[bytes]:
        for i in range(0, len(self._data), amt):
            yield self._data[i : i + amt]

    def read(self, amt: int | None = None) -> bytes:
        if amt is None:
            data, self._data = self._data, b""
        else:
            data, self._data = self._data[:amt], self._data[amt:]
        return data

    def close(self) -> None:
        pass


def stream_reply(events: list[dict[str, Any]]) -> AWSResponse:
    """An HTTP response carrying ``events`` as a real Bedrock ConverseStream body."""
    body = b"".join(encode_event(e) for e in events)
    headers = {"content-type": "application/vnd.amazon.eventstream"}
    return AWSResponse("https://bedrock-runtime.us-east-1.amazonaws.com", 200, headers, _Raw(body))


def json_reply(body: dict[str, Any]) -> AWSResponse:
    """An HTTP response carrying ``body`` as a Bedrock JSON reply, unvalidated (unlike Stubber)."""
    raw = _Raw(json.dumps(body).encode())
    headers = {"content-type": "application/json"}
    return AWSResponse("https://bedrock-runtime.us-east-1.amazonaws.com", 200, headers, raw)


# Claude Sonnet 4 on us-east-1 in bedrock-2026-11-29, USD per million tokens: input 3, output 15,
# cache read 0.3, five-minute write 3.75, one-hour write 6. Each reply below reads 120 uncached
# tokens, writes 300, reads 2,000 from the cache and writes 1,000 to it.
CACHE_TTL_COSTS = {
    # 120*3 + 300*15 + 2000*0.3 + 1000*3.75 = 9210 per million (as input it would be 8460)
    "converse_cache_5m": "0.00921",
    # 120*3 + 300*15 + 2000*0.3 + 600*3.75 + 400*6 = 10110 per million
    "converse_cache_1h": "0.01011",
}
