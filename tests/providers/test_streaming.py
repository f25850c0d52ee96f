"""Streaming providers through the pipeline: Bedrock ConverseStream and LangChain ``astream``.

Bedrock's replies are real event-stream bytes parsed by botocore (``stream_reply``), so the
events chainkit reads are the ones boto3 yields: ``messageStart``, ``contentBlockDelta``,
``contentBlockStop``, ``messageStop``, ``metadata`` (usage), and exception messages.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from decimal import Decimal
from typing import Any

import boto3
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from chainkit import (
    Budget,
    Catalogue,
    Generate,
    Ledger,
    Pipeline,
    ProviderError,
    Request,
    Throttled,
    Usage,
)
from chainkit.pipeline import Answered, TextDelta
from chainkit.providers.bedrock import BedrockModel
from chainkit.providers.langchain import LangChainModel
from chainkit.stages.calling import input_bound
from tests.providers.bedrock_http import _header, stream_reply

SONNET4 = "anthropic.claude-sonnet-4-20250514-v1:0"
CATALOGUE = Catalogue.load("bedrock-2026-11")


@pytest.fixture
def client() -> Any:
    return boto3.client("bedrock-runtime", region_name="us-east-1")


def bedrock(client: Any) -> BedrockModel:
    return BedrockModel(SONNET4, client=client, count_tokens=False, wait_initial=0, wait_max=0)


def pipeline(model: Any) -> Pipeline:
    return Pipeline([Generate(model=model, max_tokens=200, catalogue=CATALOGUE)])


async def collect(bot: Pipeline, request: Request, ledger: Ledger) -> list[Any]:
    return [event async for event in bot.astream(request, ledger)]


def bound(model: Any, text: str = "Where is my order?") -> tuple[Usage, Decimal]:
    prompt = Generate(model=model, catalogue=CATALOGUE).prompt(Request(text))
    usage = Usage(input_bound(model, prompt)[0], 200)
    return usage, CATALOGUE.cost(SONNET4, usage)


def exception_message(kind: str, message: str) -> bytes:
    """An event-stream *exception* message, as Bedrock sends one mid-stream."""
    headers = (
        _header(":exception-type", kind)
        + _header(":content-type", "application/json")
        + _header(":message-type", "exception")
    )
    payload = ('{"message": "' + message + '"}').encode()
    prelude = struct.pack(">II", 12 + len(headers) + len(payload) + 4, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def test_bedrock_deltas_and_usage_from_the_metadata_event(
    client: Any, bedrock_reply: Any, serve: Any
) -> None:
    serve(client, "ConverseStream", stream_reply(bedrock_reply("converse_stream")))
    ledger = Ledger()
    events = asyncio.run(collect(pipeline(bedrock(client)), Request("Where?", id="b"), ledger))

    assert events[:-1] == [
        TextDelta("generate", "Your order "),
        TextDelta("generate", "ships today."),
    ]
    assert isinstance(events[-1], Answered)
    assert events[-1].result.text == "Your order ships today."
    [entry] = ledger.entries()
    assert (entry.outcome, entry.estimated, entry.flags) == ("answered", False, ())
    assert entry.usage == Usage(37, 6, cache_read_tokens=1200)
    assert entry.cost == Decimal("0.000561")  # 37 x $3 + 6 x $15 + 1200 x $0.30, per million


def test_bedrock_stream_cut_before_metadata_records_the_upper_bound_estimated(
    client: Any, bedrock_reply: Any, serve: Any
) -> None:
    serve(client, "ConverseStream", stream_reply(bedrock_reply("converse_stream")[:-1]))
    model = bedrock(client)
    ledger = Ledger(budgets=[Budget("1.00", name="all")])
    events = asyncio.run(collect(pipeline(model), Request("Where is my order?", id="c"), ledger))

    assert events[-1].result.text == "Your order ships today."
    [entry] = ledger.entries()
    usage, cost = bound(model)
    assert (entry.outcome, entry.usage, entry.cost, entry.estimated) == (
        "answered",
        usage,
        cost,
        True,
    )
    assert ledger.spent("all") == cost


def test_bedrock_exception_mid_stream_is_a_provider_error_recorded_once(
    client: Any, bedrock_reply: Any, serve: Any
) -> None:
    events = bedrock_reply("converse_stream")[:2]
    response = stream_reply(events)
    response.raw._data += exception_message("modelStreamErrorException", "the model broke off")
    serve(client, "ConverseStream", response)
    ledger = Ledger(budgets=[Budget("1.00", name="all")])
    got: list[Any] = []

    async def read() -> None:
        async for event in pipeline(bedrock(client)).astream(Request("Where?", id="x"), ledger):
            got.append(event)

    with pytest.raises(ProviderError, match="modelStreamErrorException") as raised:
        asyncio.run(read())
    assert not isinstance(raised.value, Throttled)
    assert got == [TextDelta("generate", "Your order ")]
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost) == ("failed", None)
    assert ledger.status()[0].held == Decimal(0)


def test_bedrock_reader_gone_closes_the_http_stream(
    client: Any, bedrock_reply: Any, serve: Any
) -> None:
    response = stream_reply(bedrock_reply("converse_stream"))
    closed: list[bool] = []
    response.raw.close = lambda: closed.append(True)  # type: ignore[method-assign]
    serve(client, "ConverseStream", response)
    model = bedrock(client)
    ledger = Ledger()

    async def first_only() -> None:
        bot = pipeline(model)
        async with aclosing(bot.astream(Request("Where is my order?", id="g"), ledger)) as events:
            async for _ in events:
                break

    asyncio.run(first_only())

    assert closed  # closed (once by the reader, perhaps again by the reading thread)
    [entry] = ledger.entries()
    usage, cost = bound(model)
    assert (entry.outcome, entry.flags, entry.usage, entry.cost, entry.estimated) == (
        "failed",
        ("cancelled",),
        usage,
        cost,
        True,
    )


def test_bedrock_throttled_before_the_stream_is_free(client: Any, serve: Any) -> None:
    from botocore.awsrequest import AWSResponse

    from tests.providers.bedrock_http import _Raw

    body = b'{"message": "Too many requests"}'
    headers = {"x-amzn-errortype": "ThrottlingException", "content-type": "application/json"}
    throttled = AWSResponse("https://bedrock-runtime", 429, headers, _Raw(body))
    serve(client, "ConverseStream", throttled)
    model = BedrockModel(SONNET4, client=client, count_tokens=False, max_attempts=1)
    ledger = Ledger()
    with pytest.raises(Throttled):
        asyncio.run(collect(pipeline(model), Request("Where?", id="t"), ledger))
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost) == ("failed", Decimal(0))


class StreamingFake(GenericFakeChatModel):
    """LangChain's fake chat model, streaming word by word with usage on its last chunk."""

    usage: dict[str, Any] | None = None

    def _stream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:  # type: ignore[override]
        message = next(self.messages)
        words = str(message.content).split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=word if last else word + " ",
                    usage_metadata=self.usage if last and self.usage else None,  # type: ignore[arg-type]
                )
            )

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:  # type: ignore[override]
        for chunk in self._stream(messages, stop, run_manager, **kwargs):
            await asyncio.sleep(0)
            yield chunk


USAGE = {
    "input_tokens": 3120,
    "output_tokens": 300,
    "total_tokens": 3420,
    "input_token_details": {"cache_read": 2000, "cache_creation": 1000},
}


def test_langchain_astream_prices_the_usage_of_its_chunks_without_double_counting() -> None:
    chat = StreamingFake(messages=iter([AIMessage("Thirty days, free.")]), usage=USAGE)
    model = LangChainModel(chat, model_id=SONNET4)
    ledger = Ledger()
    events = asyncio.run(collect(pipeline(model), Request("Returns?", id="l"), ledger))

    assert [e.text for e in events[:-1]] == ["Thirty ", "days, ", "free."]
    [entry] = ledger.entries()
    assert entry.usage == Usage(120, 300, cache_read_tokens=2000, cache_write_tokens=1000)
    # 120 x $3 + 300 x $15 + 2000 x $0.30 + 1000 x $3.75, per million
    assert entry.cost == Decimal("0.00921")


def test_langchain_astream_without_usage_records_the_upper_bound() -> None:
    chat = StreamingFake(messages=iter([AIMessage("Thirty days, free.")]))
    model = LangChainModel(chat, model_id=SONNET4)
    ledger = Ledger()
    asyncio.run(collect(pipeline(model), Request("Where is my order?", id="n"), ledger))
    [entry] = ledger.entries()
    usage, cost = bound(model)
    assert (entry.outcome, entry.usage, entry.cost, entry.estimated) == (
        "answered",
        usage,
        cost,
        True,
    )


def test_langchain_arun_goes_through_ainvoke_and_records_what_run_records() -> None:
    def chat() -> StreamingFake:
        return StreamingFake(messages=iter([AIMessage("Thirty days.", usage_metadata=USAGE)]))  # type: ignore[arg-type]

    sync_ledger, async_ledger = Ledger(), Ledger()
    pipeline(LangChainModel(chat(), model_id=SONNET4)).run(Request("q", id="q"), sync_ledger)
    result = asyncio.run(
        pipeline(LangChainModel(chat(), model_id=SONNET4)).arun(Request("q", id="q"), async_ledger)
    )
    assert result.text == "Thirty days."
    [s], [a] = sync_ledger.entries(), async_ledger.entries()
    assert (a.usage, a.cost, a.outcome) == (s.usage, s.cost, s.outcome)
    assert a.cost == Decimal("0.00921")


def test_bedrock_streams_on_one_loop_read_concurrently(client: Any, bedrock_reply: Any) -> None:
    """Twelve streams all reading at once (a barrier they must all reach), more than a shared
    pool of worker threads would let through: each stream has a reading thread of its own."""
    import threading

    from botocore.awsrequest import AWSResponse
    from moto.core.models import botocore_stubber

    from tests.providers.bedrock_http import _Raw

    streams = 12
    barrier = threading.Barrier(streams, timeout=20)

    class Trickle(_Raw):
        def stream(self, amt: int = 1024, decode_content: bool = True) -> Iterator[bytes]:
            barrier.wait()  # every stream is being read before any gets its events
            yield from super().stream(amt, decode_content)

    def respond(request: Any, **_: Any) -> AWSResponse:
        body = stream_reply(bedrock_reply("converse_stream")).raw._data
        headers = {"content-type": "application/vnd.amazon.eventstream"}
        return AWSResponse("https://bedrock-runtime", 200, headers, Trickle(body))

    client.meta.events.unregister("before-send", botocore_stubber)
    client.meta.events.register_first("before-send.bedrock-runtime.ConverseStream", respond)
    ledger = Ledger()
    bot = pipeline(bedrock(client))

    async def main() -> list[list[Any]]:
        return await asyncio.gather(
            *(collect(bot, Request("Where?", id=f"s{i}"), ledger) for i in range(streams))
        )

    results = asyncio.run(main())
    assert all(r[-1].result.text == "Your order ships today." for r in results)
    assert [e.cost for e in ledger.entries()] == [Decimal("0.000561")] * streams
