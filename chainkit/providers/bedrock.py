"""Amazon Bedrock through boto3's ``bedrock-runtime`` Converse API.

A model takes a client, so that tests can hand it a stubbed one::

    model = BedrockModel("anthropic.claude-3-haiku-20240307-v1:0",
                         client=boto3.client("bedrock-runtime", region_name="us-east-1"))

Usage comes from the reply: Bedrock's ``inputTokens`` excludes prompt-cache reads and writes,
which arrive as ``cacheReadInputTokens`` and ``cacheWriteInputTokens`` and are priced at their
own rates; ``cacheDetails`` splits the writes by TTL, and one-hour writes have their own price.
Throttling, connection failures and 5xx are retried here (tenacity, exponential backoff with full
jitter, never past the call's deadline); validation and access errors are not, and neither is a
read timeout: Bedrock may have run (and billed) a call whose reply did not arrive, so it ends as
:class:`~chainkit.Timeout` with its cost unknown rather than being paid for twice. Errors leave
as chainkit errors naming the Bedrock error code and the model.

Metadata (chainkit's ``stage`` and ``request_id``, then the ledger tags) goes to Converse's
``requestMetadata``, escaped into its alphabet by :func:`encode_metadata` so that nothing is lost
or merged; tags named in ``private_tags`` stay in the ledger and are never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from chainkit.errors import BadResponse, ConfigError, ProviderError, Throttled, Timeout
from chainkit.pricing import Tier, base_model_id
from chainkit.providers.model import METADATA_KEYS, Chunk, Completion, Prompt, check_private_tags
from chainkit.records import Usage
from chainkit.tokens import count_tokens

__all__ = [
    "BedrockModel",
    "BedrockStream",
    "RetryPolicy",
    "call_aws",
    "decode_metadata",
    "encode_metadata",
    "error_code",
    "error_detail",
    "request_metadata",
    "usage_from_bedrock",
]

# Bedrock error codes worth another attempt: capacity, throttling, timeouts and server faults.
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ServiceUnavailableException",
        "ModelTimeoutException",
        "InternalServerException",
        "ModelNotReadyException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_THROTTLING = frozenset({"ThrottlingException", "ServiceUnavailableException"})
_HINTS = {
    "AccessDeniedException": (
        "Enable access to this model in the Bedrock console (Model access) for this region, and "
        "check that the IAM policy allows bedrock:InvokeModel on it."
    ),
    "ResourceNotFoundException": (
        "The model id or inference profile does not exist in this region; check the id, or use "
        "a cross-region inference profile (us./eu. prefix)."
    ),
    "ValidationException": "Bedrock rejected the request; check the model id and parameters.",
    "ThrottlingException": "Lower the concurrency, or request a higher quota for this model.",
    "ServiceUnavailableException": "Retry later, or use a cross-region inference profile.",
}
_TIER_TO_BEDROCK = {"flex": "flex", "priority": "priority"}
_TIER_FROM_BEDROCK: dict[str, Tier] = {
    "default": "on_demand",
    "flex": "flex",
    "priority": "priority",
}
# requestMetadata (botocore's service model): 1 to 16 pairs, keys of 1 to 256 and values of 0
# to 256 characters of [a-zA-Z0-9\s:_@$#=/+,-.], where \s is Java's (ASCII) whitespace and ,-. is
# the range ',' to '.'. Sent as they are: that alphabet less the escape '=' and the control
# whitespace (tab, newlines), which are escaped too so that each pair reads on one log line.
_METADATA_ESCAPE = re.compile(r"[^a-zA-Z0-9 :_@$#/+,\-.]")
_METADATA_ESCAPED = re.compile(r"(?:=[0-9A-F]{2})+")
_METADATA_PAIRS = 16
_METADATA_LEN = 256
# chainkit's keys go first, so that no number of tags can push them out.
_OWN_KEYS = METADATA_KEYS
_OWN_NAMES = {"stage": "stage name", "request_id": "request id"}
_ARN = re.compile(r"^arn:aws[\w-]*:bedrock:[\w-]+:\d{12}:application-inference-profile/")


def usage_from_bedrock(usage: Any, model_id: str) -> Usage:
    """Usage from a Converse ``usage`` object; ``inputTokens`` already excludes cached tokens."""
    if not isinstance(usage, Mapping):
        raise BadResponse(
            f"Bedrock reply for model {model_id!r} has no `usage`; chainkit cannot price a call "
            "without token counts. Check that the model supports the Converse API.",
            code="MissingUsage",
            model_id=model_id,
        )
    try:
        details = usage.get("cacheDetails") or ()
        if not isinstance(details, list | tuple) or not all(
            isinstance(d, Mapping) for d in details
        ):
            raise TypeError("cacheDetails is not a list of objects")
        one_hour = sum(_tokens(d["inputTokens"]) for d in details if d.get("ttl") == "1h")
        split = sum(_tokens(d["inputTokens"]) for d in details)
        return Usage(
            input_tokens=_tokens(usage["inputTokens"]),
            output_tokens=_tokens(usage["outputTokens"]),
            cache_read_tokens=_tokens(usage.get("cacheReadInputTokens", 0)),
            cache_write_tokens=_tokens(usage.get("cacheWriteInputTokens", split)),
            cache_write_1h_tokens=one_hour,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadResponse(
            f"Bedrock reply for model {model_id!r} has malformed usage {dict(usage)!r}: {exc}.",
            code="MalformedUsage",
            model_id=model_id,
        ) from exc


def _tokens(value: Any) -> int:
    """A token count as Bedrock sends it (a JSON integer); 1.9 or "5" is malformed, not rounded."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise ValueError(f"token count {value!r:.40} is not a whole number")


def _unknown_ttls(usage: Any) -> str:
    """Why a Converse ``usage`` cannot be priced exactly: cache writes of a TTL with no price.

    Bedrock documents ``5m`` and ``1h``; a write of any other TTL (``30m``, ``1H``) is not priced
    at either rate: the call's cost is unknown (``""``: every write has a known TTL).
    """
    details = usage.get("cacheDetails") if isinstance(usage, Mapping) else None
    if not isinstance(details, list | tuple):
        return ""
    odd = sorted({repr(d.get("ttl")) for d in details if isinstance(d, Mapping)} - {"'5m'", "'1h'"})
    if not odd:
        return ""
    return (
        f"The reply reports cache writes with TTL {', '.join(odd)}, which chainkit has no price "
        "for (Bedrock prices '5m' and '1h' writes); the call's cost is unknown."
    )


def _escape(match: re.Match[str]) -> str:
    return "".join(f"={byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def encode_metadata(text: str) -> str:
    r"""``text`` in Converse ``requestMetadata``'s alphabet, reversibly (quoted-printable-like).

    Letters, digits, the space and ``:_@$#/+,-.`` are kept; every other character (the escape
    ``=`` itself, tabs and newlines, non-ASCII whitespace such as NBSP, any non-ASCII letter)
    becomes ``=XX`` for each byte of its UTF-8 encoding, in upper-case hex. Two different texts
    never encode alike, and :func:`decode_metadata` gives the text back.

    >>> encode_metadata("Café=1\u00a0東京")
    'Caf=C3=A9=3D1=C2=A0=E6=9D=B1=E4=BA=AC'
    >>> decode_metadata("Caf=C3=A9=3D1=C2=A0=E6=9D=B1=E4=BA=AC")
    'Café=1\xa0東京'
    """
    return _METADATA_ESCAPE.sub(_escape, text)


def _unescape(match: re.Match[str]) -> str:
    return bytes.fromhex(match.group().replace("=", "")).decode("utf-8", "surrogatepass")


def decode_metadata(text: str) -> str:
    """The text that :func:`encode_metadata` encoded as ``text`` (read Bedrock's logs with it).

    Raises ``ValueError`` for text that no encoding gives (a stray ``=``, bytes that are not
    UTF-8).
    """
    if "=" in _METADATA_ESCAPED.sub("", text):
        raise ValueError(f"{text!r:.80} has an '=' that starts no =XX escape; not encoded.")
    return _METADATA_ESCAPED.sub(_unescape, text)


def _too_long(key: str, what: str, length: int) -> ConfigError:
    # Neither the text nor its encoding is quoted: a tag may hold personal data, and the
    # message ends up in the ledger's note and in logs.
    if key in _OWN_KEYS:
        fix = f"chainkit sends {key!r} with every call: use a shorter {_OWN_NAMES[key]}."
    else:
        fix = (
            f"Shorten it, or mark the tag private (BedrockModel(..., private_tags=({key!r},))) "
            "to keep it in the ledger without sending it."
        )
    return ConfigError(
        f"Bedrock requestMetadata {what} is {length} characters once encoded, over Bedrock's "
        f"limit of {_METADATA_LEN} (characters outside letters, digits and ' :_@$#/+,-.' take "
        f"3 to 12 each). {fix}"
    )


def request_metadata(
    metadata: Mapping[str, str] | None, private_tags: Iterable[str] = ()
) -> dict[str, str]:
    """Converse ``requestMetadata`` for ``metadata``: chainkit's keys first, private tags left out.

    Every key and value is encoded with :func:`encode_metadata`; nothing is truncated, merged
    or dropped: a key or value too long once encoded, or more than 16 pairs, is a
    ``ConfigError``. ``stage`` and ``request_id`` are chainkit's keys and always sent.
    """
    if not metadata:
        return {}
    private = frozenset(private_tags)
    own = [key for key in _OWN_KEYS if key in metadata]
    tags = [key for key in metadata if key not in _OWN_KEYS and key not in private]
    if len(own) + len(tags) > _METADATA_PAIRS:
        sent = " and ".join(own)
        raise ConfigError(
            f"Bedrock requestMetadata takes at most {_METADATA_PAIRS} pairs; this call has "
            f"{len(own) + len(tags)}: {sent + ' (chainkit keys, always sent) and ' if sent else ''}"
            f"{len(tags)} tags {tags!r}. Mark at least {len(own) + len(tags) - _METADATA_PAIRS} "
            "of the tags private (BedrockModel(..., private_tags=(...))): they stay in the "
            "ledger and are not sent."
        )
    out: dict[str, str] = {}
    for key in own + tags:
        value = metadata[key]
        if type(key) is not str or type(value) is not str:
            raise ConfigError(
                f"Metadata keys and values must be str, got {type(key).__name__} key {key!r:.60} "
                f"with a {type(value).__name__} value."
            )
        if not key:
            raise ConfigError("Bedrock requestMetadata keys cannot be empty; name the tag.")
        name = encode_metadata(key)
        if len(name) > _METADATA_LEN:
            raise _too_long(key, f"key {key!r:.60}", len(name))
        encoded = encode_metadata(value)
        if len(encoded) > _METADATA_LEN:
            raise _too_long(key, f"value of {key!r:.60} ({len(value)} characters)", len(encoded))
        out[name] = encoded
    return out


def error_code(exc: BaseException) -> tuple[str | None, int | None]:
    """The AWS error code and HTTP status of a botocore ``ClientError`` (``None`` otherwise)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None, None
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code"), status if isinstance(status, int) else None


def error_detail(exc: BaseException) -> str:
    """The AWS error message of a ``ClientError``, else the exception's text."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        message = response.get("Error", {}).get("Message")
        if message:
            return str(message)
    return str(exc)


# Raised before the request reached Bedrock: nothing ran, nothing was billed, safe to retry.
_NOT_SENT = frozenset({"ConnectTimeoutError", "EndpointConnectionError"})
# The request was sent and its reply never came: it may have run and been billed.
_READ_TIMEOUTS = frozenset({"ReadTimeoutError", "ReadTimeout"})


def _retryable(exc: BaseException) -> bool:
    code, status = error_code(exc)
    if code is not None:
        return code in RETRYABLE_CODES or (status is not None and status >= 500)
    # botocore's connection errors carry no error code.
    return type(exc).__name__ in _NOT_SENT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry: exponential backoff with full jitter."""

    max_attempts: int = 5
    wait_initial: float = 0.5
    wait_max: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}.")


def call_aws(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    retry: RetryPolicy,
    fail: Callable[[Exception, int], ProviderError],
    timeout_s: float | None = None,
) -> tuple[Any, int]:
    """Call ``fn(**kwargs)``, retrying only throttling, connection failures and 5xx.

    Retries stop before ``timeout_s`` (seconds from now) would pass. Returns the reply and the
    attempts it took; on failure raises ``fail(exc, attempts)``.
    """
    attempts = 0

    def count(state: RetryCallState) -> None:
        nonlocal attempts
        attempts = state.attempt_number

    stop: stop_base = stop_after_attempt(retry.max_attempts)
    if timeout_s is not None:
        # Stop when the next wait would end past the deadline, not after it has passed.
        stop = stop | stop_before_delay(timeout_s)
    retrying = Retrying(
        stop=stop,
        wait=wait_random_exponential(multiplier=retry.wait_initial, max=retry.wait_max),
        retry=retry_if_exception(_retryable),
        before=count,
        reraise=True,
    )
    try:
        return retrying(fn, **kwargs), attempts
    except Exception as exc:
        raise fail(exc, attempts) from exc


@dataclass
class BedrockStream:
    """Text chunks of a ConverseStream reply; ``completion`` is set once the stream is read."""

    chunks: Iterator[str]
    completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        return self.chunks


class BedrockModel:
    """A Bedrock model called through Converse, priced from the catalogue.

    Args:
        model_id: a model id, a cross-region inference profile id (``us.anthropic...``) or an
            application inference profile ARN (then ``priced_as`` must name the model).
        client: a ``bedrock-runtime`` client; by default one is made for ``region``. botocore's
            own retries are switched off on it either way (on a client you pass in, too): they
            would retry read timeouts, which Bedrock may have billed; retrying is done here.
        region: the AWS region, for the client and for prices (default: the client's).
        tier: ``on_demand`` (Bedrock's default tier), ``flex`` or ``priority``.
        priced_as: the catalogue model id to price calls as.
        count_tokens: estimate prompts with the CountTokens API where the model supports it;
            otherwise (or when ``False``) with chainkit's offline counter.
        max_attempts: calls made at most, retries included.
        timeout_s: the read timeout of the default client (each attempt's deadline).
        private_tags: tag keys kept in the ledger but never sent in ``requestMetadata``
            (``("customer_email",)``); chainkit's own ``stage`` and ``request_id`` are always sent.
    """

    def __init__(
        self,
        model_id: str,
        *,
        client: Any | None = None,
        region: str | None = None,
        tier: Tier = "on_demand",
        priced_as: str | None = None,
        count_tokens: bool = True,
        max_attempts: int = 5,
        wait_initial: float = 0.5,
        wait_max: float = 20.0,
        timeout_s: float = 120.0,
        private_tags: Iterable[str] = (),
    ) -> None:
        if tier == "batch":
            raise ConfigError(
                "BedrockModel calls Converse, which has no batch tier; batch inference runs as "
                "a model invocation job. Use tier 'on_demand', 'flex' or 'priority'."
            )
        if _ARN.match(model_id) and priced_as is None:
            raise ConfigError(
                f"{model_id!r} is an application inference profile ARN, which does not say "
                "which model it routes to; pass priced_as='<catalogue model id>' to price it."
            )
        retry = RetryPolicy(max_attempts, wait_initial, wait_max)
        self.private_tags = check_private_tags(private_tags, "BedrockModel")
        if client is None:
            client = _default_client(region, timeout_s)
        else:
            _no_botocore_retries(client)
        self.client = client
        self.invoke_id = model_id
        self.model_id = priced_as or model_id
        self.region = region or getattr(getattr(client, "meta", None), "region_name", None)
        self.tier: Tier = tier
        self.count_tokens = count_tokens
        self._retry = retry
        self._count_tokens_unsupported = False

    def __repr__(self) -> str:
        return f"BedrockModel({self.invoke_id!r}, region={self.region!r}, tier={self.tier!r})"

    # -- requests --------------------------------------------------------------------------

    def _request(
        self, prompt: Prompt, max_tokens: int, metadata: Mapping[str, str] | None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "modelId": self.invoke_id,
            "messages": _messages(prompt),
            "inferenceConfig": {"maxTokens": max_tokens},
        }
        if prompt.system:
            request["system"] = [{"text": prompt.system}]
        tags = request_metadata(metadata, self.private_tags)
        if tags:
            request["requestMetadata"] = tags
        if self.tier in _TIER_TO_BEDROCK:
            request["serviceTier"] = {"type": _TIER_TO_BEDROCK[self.tier]}
        return request

    def check_metadata(self, metadata: Mapping[str, str]) -> None:
        """Raise ``ConfigError`` now if ``metadata`` cannot be sent as ``requestMetadata``.

        :class:`~chainkit.stages.calling.ModelCall` asks before it reserves or sends anything.
        """
        request_metadata(metadata, self.private_tags)

    def _call(
        self, operation: str, timeout_s: float | None = None, **kwargs: Any
    ) -> tuple[Any, int]:
        """Call ``operation`` with retries; return the reply and the attempts it took."""
        return call_aws(
            getattr(self.client, operation),
            kwargs,
            retry=self._retry,
            fail=self._map,
            timeout_s=timeout_s,
        )

    def _map(self, exc: Exception, attempts: int) -> ProviderError:
        if type(exc).__name__ in _READ_TIMEOUTS:
            return Timeout(
                f"Bedrock did not answer for model {self.invoke_id!r} within the read timeout "
                f"(attempt {attempts}): {exc}. It may have run and billed the call: the entry "
                "records its cost as unknown. Raise timeout_s, or lower max_tokens.",
                code="ReadTimeout",
                model_id=self.invoke_id,
                attempts=attempts,
            )
        code = error_code(exc)[0] or type(exc).__name__
        detail = error_detail(exc)
        hint = _HINTS.get(code, "")
        message = (
            f"Bedrock {code} for model {self.invoke_id!r} after {attempts} attempt(s): "
            f"{detail}. {hint}"
        ).strip()
        cls = Throttled if code in _THROTTLING else ProviderError
        return cls(message, code=code, model_id=self.invoke_id, attempts=attempts)

    # -- the Model protocol ----------------------------------------------------------------

    def complete(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        """Call Converse and return the reply with the usage Bedrock reported.

        ``timeout_s`` caps the time spent retrying; each attempt's read timeout is the client's
        (the default client's is ``timeout_s`` of the model, 120 s unless set).
        """
        started = time.perf_counter()
        reply, attempts = self._call(
            "converse", timeout_s, **self._request(prompt, max_tokens, metadata)
        )
        try:
            content = reply["output"]["message"]["content"]
        except (KeyError, TypeError) as exc:
            raise BadResponse(
                f"Bedrock reply for model {self.invoke_id!r} has no output message.",
                code="MissingOutput",
                model_id=self.invoke_id,
                attempts=attempts,
            ) from exc
        text = "".join(block["text"] for block in content if "text" in block)
        try:
            usage = usage_from_bedrock(reply.get("usage"), self.invoke_id)
        except BadResponse as exc:
            exc.attempts = attempts
            raise
        return Completion(
            text=text,
            usage=usage,
            model_id=self.model_id,
            estimated=False,
            latency_s=time.perf_counter() - started,
            attempts=attempts,
            unpriced=_unknown_ttls(reply.get("usage")),
        )

    def stream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> BedrockStream:
        """Call ConverseStream; iterate for text, then read ``completion`` for usage."""
        started = time.perf_counter()
        reply, attempts = self._call(
            "converse_stream", None, **self._request(prompt, max_tokens, metadata)
        )
        result = BedrockStream(chunks=iter(()))

        def chunks() -> Iterator[str]:
            parts: list[str] = []
            usage: Usage | None = None
            unpriced = ""
            for event in reply["stream"]:
                chunk = self._chunk(event, attempts)
                if chunk is None:
                    continue
                if chunk.usage is not None:
                    usage, unpriced = chunk.usage, chunk.unpriced
                if chunk.text:
                    parts.append(chunk.text)
                    yield chunk.text
            if usage is None:
                raise BadResponse(
                    f"Bedrock stream for model {self.invoke_id!r} ended without a metadata "
                    "event, so its usage is unknown.",
                    code="MissingUsage",
                    model_id=self.invoke_id,
                    attempts=attempts,
                )
            result.completion = Completion(
                text="".join(parts),
                usage=usage,
                model_id=self.model_id,
                latency_s=time.perf_counter() - started,
                attempts=attempts,
                unpriced=unpriced,
            )

        result.chunks = chunks()
        return result

    def _chunk(self, event: Any, attempts: int) -> Chunk | None:
        """One ConverseStream event as a chunk: text, usage, or nothing (start and stop events).

        ``contentBlockDelta`` carries text (tool-use and reasoning deltas carry none that
        chainkit passes on; their tokens are in the usage); ``metadata`` carries the usage;
        an exception event (``throttlingException``, ``modelStreamErrorException``...) ends
        the stream as a chainkit error.
        """
        if not isinstance(event, Mapping):
            raise BadResponse(
                f"Bedrock stream for model {self.invoke_id!r} sent {event!r:.80}, not an event.",
                code="MalformedEvent",
                model_id=self.invoke_id,
                attempts=attempts,
            )
        if "contentBlockDelta" in event:
            delta = (event["contentBlockDelta"] or {}).get("delta") or {}
            text = delta.get("text")
            return Chunk(text) if isinstance(text, str) and text else None
        if "metadata" in event:
            try:
                usage = usage_from_bedrock((event["metadata"] or {}).get("usage"), self.invoke_id)
            except BadResponse as exc:
                exc.attempts = attempts
                raise
            unpriced = _unknown_ttls((event["metadata"] or {}).get("usage"))
            return Chunk(usage=usage, model_id=self.model_id, attempts=attempts, unpriced=unpriced)
        for name, body in event.items():
            if name.endswith("Exception"):
                cls = Throttled if name == "throttlingException" else ProviderError
                message = body.get("message", "") if isinstance(body, Mapping) else ""
                raise cls(
                    f"Bedrock stream for model {self.invoke_id!r} failed with {name}: {message}",
                    code=name,
                    model_id=self.invoke_id,
                    attempts=attempts,
                )
        return None  # messageStart, contentBlockStart/Stop, messageStop: nothing to pass on

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """ConverseStream for the event loop: text chunks as they come, then the usage.

        boto3 is synchronous, so a daemon thread of this stream's own makes the request and
        reads the event stream, handing each event to the loop (in a shared pool, a few streams
        waiting on tokens would hold every thread and stall the others). Closing this
        generator closes the HTTP stream, so that Bedrock stops generating, and ends the
        thread. A stream that ends without a ``metadata`` event simply ends: the caller records
        its upper bound.
        """
        request = self._request(prompt, max_tokens, metadata)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        opened: list[Any] = []

        def put(kind: str, value: Any) -> None:
            # A closed loop: the reader is gone and has recorded the call already.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def pump() -> None:
            try:
                reply, attempts = self._call("converse_stream", None, **request)
                opened.append(reply["stream"])
                put("start", attempts)
                for event in reply["stream"]:
                    if stop.is_set():
                        break
                    put("event", event)
                put("end", None)
            except BaseException as exc:
                put("error", exc)
            finally:
                if stop.is_set() and opened:
                    _close_quietly(opened[0])

        threading.Thread(target=pump, name="chainkit-stream", daemon=True).start()
        attempts = 1
        try:
            while True:
                kind, value = await queue.get()
                if kind == "start":
                    attempts = value
                elif kind == "event":
                    chunk = self._chunk(value, attempts)
                    if chunk is not None:
                        yield chunk
                elif kind == "end":
                    return
                elif isinstance(value, ProviderError):
                    raise value
                else:
                    # An exception message in the stream (botocore's EventStreamError, a
                    # ClientError) or a broken connection: a chainkit error, as from Converse.
                    raise self._map(value, attempts) from value
        finally:
            stop.set()
            if opened:
                _close_quietly(opened[0])

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Prompt tokens (by CountTokens where supported, else offline) plus the output budget."""
        if self.count_tokens and not self._count_tokens_unsupported:
            body: dict[str, Any] = {"messages": _messages(prompt)}
            if prompt.system:
                body["system"] = [{"text": prompt.system}]
            try:
                reply, _ = self._call(
                    "count_tokens",
                    None,
                    modelId=base_model_id(self.model_id),
                    input={"converse": body},
                )
                return Usage(int(reply["inputTokens"]), max_tokens)
            except ProviderError as exc:
                if exc.code not in ("ValidationException", "AccessDeniedException"):
                    raise
                # The model has no CountTokens support (or no permission): stop asking.
                self._count_tokens_unsupported = True
        inputs = count_tokens(prompt.system, self.model_id) + count_tokens(
            prompt.user, self.model_id
        )
        inputs += sum(count_tokens(t.text, self.model_id) for t in prompt.history)
        return Usage(inputs, max_tokens)


def _messages(prompt: Prompt) -> list[dict[str, Any]]:
    """Converse ``messages``: a conversation's earlier turns with their roles, then the ask."""
    return [{"role": role, "content": [{"text": text}]} for role, text in prompt.messages()]


def _close_quietly(stream: Any) -> None:
    """Close a botocore event stream (and its HTTP body); one already closed is fine."""
    close = getattr(stream, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def _no_botocore_retries(client: Any) -> None:
    """Switch off botocore's own retries on ``client`` (legacy, standard and adaptive modes).

    botocore retries a read timeout, and Bedrock may have run (and billed) the first attempt:
    one call could be paid twice and recorded once. chainkit retries only what was certainly not
    billed. botocore registers its retry handler under ``retry-config-<service>`` in every mode.
    """
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is not None:
        events.unregister("needs-retry.bedrock-runtime", unique_id="retry-config-bedrock-runtime")


def _default_client(region: str | None, timeout_s: float) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("BedrockModel needs boto3: pip install 'chainkit[bedrock]'.") from exc
    # botocore's own retries are off: it would retry a read timeout, and Bedrock may have billed
    # the first attempt. chainkit retries only what was certainly not billed.
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=min(10.0, timeout_s),
        read_timeout=timeout_s,
    )
    return boto3.client("bedrock-runtime", region_name=region, config=config)
