"""Any langchain-core chat model as a chainkit model.

LangChain's ``usage_metadata["input_tokens"]`` *includes* prompt-cache reads and writes (they
are broken out in ``input_token_details``); chainkit's ``Usage.input_tokens`` excludes them, so
they are subtracted here, once, and priced at their own rates. When a reply splits cache writes
by TTL (Bedrock's ``cacheDetails``, Anthropic's ``cache_creation``), langchain-aws and
langchain-anthropic move them to ``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``
and set ``cache_creation`` to 0; those are cache writes too, and one-hour writes have their own
price.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

from chainkit.errors import BadResponse, ConfigError, ProviderError, Throttled
from chainkit.pricing import Catalogue, Tier
from chainkit.providers.model import (
    METADATA_KEYS,
    Chunk,
    Completion,
    Prompt,
    check_private_tags,
)
from chainkit.records import MAX_TOKENS, Usage
from chainkit.tokens import count_tokens

__all__ = ["LangChainModel", "model_id_of", "service_tier_of", "unpriced", "usage_from_langchain"]

_MODEL_KEYS = ("model_id", "model_name", "model")


_SERVICE_TIERS: dict[str, Tier] = {"default": "on_demand", "priority": "priority", "flex": "flex"}
# Cache reads as langchain-openai names them for each OpenAI service tier.
_CACHE_READ_KEYS = ("cache_read", "priority_cache_read", "flex_cache_read")


def _count(value: Any, what: str, model_id: str, *, required: bool = False) -> int:
    """A token count from LangChain usage; anything but a whole number is malformed."""
    if value is None and not required:
        return 0
    count: int | None = None
    if type(value) is int:
        count = value
    elif type(value) is float and value.is_integer():
        count = int(value)
    if count is None or count < 0 or count > MAX_TOKENS:
        raise BadResponse(
            f"LangChain usage from model {model_id!r} is malformed: {what} is {value!r:.40}, "
            "not a whole number of tokens; chainkit cannot price the call (its cost is unknown).",
            code="MalformedUsage",
            model_id=model_id,
        )
    return count


def _details(usage: Mapping[str, Any], key: str, model_id: str) -> Mapping[str, Any]:
    details = usage.get(key)
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise BadResponse(
            f"LangChain usage from model {model_id!r} is malformed: {key} is "
            f"{type(details).__name__} {details!r:.40}, not a mapping; chainkit cannot price the "
            "call (its cost is unknown).",
            code="MalformedUsage",
            model_id=model_id,
        )
    return details


def usage_from_langchain(usage: Mapping[str, Any] | None, model_id: str) -> Usage:
    """Usage from an ``AIMessage.usage_metadata``, cached tokens taken out of ``input_tokens``.

    Raises ``BadResponse`` when there is no usage or it is malformed (a count that is not a whole
    number, missing, negative, or details that are not a mapping). Parts of a call chainkit cannot
    price (audio tokens) are counted here as the tokens they are; :func:`unpriced` names them.
    """
    if not usage or not isinstance(usage, Mapping):
        raise BadResponse(
            f"LangChain reply from model {model_id!r} has no usage_metadata; chainkit cannot "
            "price it. Use a chat model integration that reports usage (most do; streaming ones "
            "may need stream_usage=True).",
            code="MissingUsage",
            model_id=model_id,
        )
    details = _details(usage, "input_token_details", model_id)
    _details(usage, "output_token_details", model_id)
    reads = {
        key: _count(details.get(key), f"input_token_details[{key!r}]", model_id)
        for key in _CACHE_READ_KEYS
    }
    distinct = {n for n in reads.values() if n}
    if len(distinct) > 1:
        raise BadResponse(
            f"LangChain usage from model {model_id!r} is ambiguous: it reports cache reads "
            f"{reads}; chainkit cannot tell how many tokens were read from the cache.",
            code="MalformedUsage",
            model_id=model_id,
        )
    # langchain-openai reports a priority or flex call's cache reads under its tier's name.
    cache_read = distinct.pop() if distinct else 0
    five_minutes = _count(
        details.get("ephemeral_5m_input_tokens"), "ephemeral_5m_input_tokens", model_id
    )
    one_hour = _count(
        details.get("ephemeral_1h_input_tokens"), "ephemeral_1h_input_tokens", model_id
    )
    # With a TTL split, cache_creation is 0 (langchain-aws, langchain-anthropic) so that nothing is
    # counted twice; an integration that leaves the total there as well is read the same way.
    creation = _count(details.get("cache_creation"), "cache_creation", model_id)
    cache_write = max(creation, five_minutes + one_hour)
    inputs = _count(usage.get("input_tokens"), "input_tokens", model_id, required=True)
    uncached = inputs - cache_read - cache_write
    if uncached < 0:
        raise BadResponse(
            f"LangChain usage from model {model_id!r} is inconsistent: input_tokens "
            f"{inputs} is less than its cached tokens "
            f"({cache_read} read + {cache_write} written).",
            code="MalformedUsage",
            model_id=model_id,
        )
    output = _count(usage.get("output_tokens"), "output_tokens", model_id, required=True)
    return Usage(uncached, output, cache_read, cache_write, one_hour)


def _text_of(message: Any) -> str:
    """The text of a message chunk: its content, or the text blocks of a list content."""
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    text = getattr(message, "text", "")
    text = text() if callable(text) else text
    return text if isinstance(text, str) else ""


def unpriced(usage: Mapping[str, Any] | None) -> str:
    """What of a reply's ``usage_metadata`` chainkit cannot price (``""``: nothing).

    Audio tokens are billed at their own rates, which chainkit's ``Usage`` does not carry:
    pricing them as text would record a wrong amount, so such a call's cost is unknown.
    """
    if not isinstance(usage, Mapping):
        return ""
    parts = []
    for key, side in (("input_token_details", "input"), ("output_token_details", "output")):
        details = usage.get(key)
        audio = details.get("audio") if isinstance(details, Mapping) else None
        if audio:
            parts.append(f"{audio!r:.20} {side} audio tokens")
    if not parts:
        return ""
    return (
        "The reply reports " + " and ".join(parts) + ", which are billed at audio rates "
        "chainkit does not price; the call's cost is unknown."
    )


def service_tier_of(response_metadata: Any, usage: Any = None) -> Tier | str | None:
    """The service tier a reply says it ran at (``priority``, ``flex``, ``on_demand``), if any.

    A tier chainkit has no prices for (OpenAI's ``scale``) is returned as the reply names it.
    """
    if isinstance(response_metadata, Mapping):
        tier = response_metadata.get("service_tier")
        if isinstance(tier, str) and tier:
            return _SERVICE_TIERS.get(tier, tier)
    details = usage.get("input_token_details") if isinstance(usage, Mapping) else None
    if isinstance(details, Mapping):
        for name in ("priority", "flex"):
            if details.get(name) or details.get(f"{name}_cache_read"):
                return _SERVICE_TIERS[name]
    return None


def provider_of(chat_model: Any) -> str | None:
    """The provider LangChain traces a chat model under (``ls_provider``: openai, anthropic...)."""
    try:
        params = chat_model._get_ls_params()
    except Exception:  # a chat model with unusual tracing params is simply not recognised
        return None
    provider = params.get("ls_provider") if isinstance(params, Mapping) else None
    return provider if isinstance(provider, str) else None


def catalogue_and_id(chat_model: Any, model_id: str) -> tuple[Catalogue, str]:
    """The catalogue that prices ``chat_model``'s provider, and ``model_id`` as that one names it.

    Bedrock chat models are priced by the default (Bedrock) catalogue; a provider genai-prices
    knows (OpenAI, Anthropic, Google, Azure, Mistral...) by the genai-prices catalogue, under the
    id ``provider:model``; anything else by the default catalogue.
    """
    return catalogue_for_provider(provider_of(chat_model), model_id)


def catalogue_for_provider(provider: str | None, model_id: str) -> tuple[Catalogue, str]:
    """The catalogue that prices LangChain provider ``provider``, and ``model_id`` as it names it.

    genai-prices' catalogue is the one of the day each call is priced on, so a process that runs
    for days prices each call at its own day's prices.
    """
    try:
        from chainkit.pricing_genai import (
            current_genai_catalogue,
            genai_model_id,
            genai_provider_for,
        )

        genai = genai_provider_for(provider)
    except ImportError:  # genai-prices not installed: only the bundled catalogues
        return Catalogue.load(), model_id
    if genai is None:
        return Catalogue.load(), model_id
    return current_genai_catalogue(), genai_model_id(genai, model_id)


def model_id_of(source: Any) -> str | None:
    """The model id a chat model or a reply's ``response_metadata`` names, if any."""
    for key in _MODEL_KEYS:
        value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
        if isinstance(value, str) and value:
            return value
    return None


class LangChainModel:
    """Wrap a langchain-core ``BaseChatModel``; usage from the reply's ``usage_metadata``.

    Args:
        chat_model: any chat model (ChatBedrockConverse, ChatOpenAI, ChatAnthropic, a fake).
        model_id: the catalogue id to price calls as; by default the chat model's own
            ``model_id``/``model_name``/``model`` attribute.
        region: the AWS region prices are taken for (default: the chat model's ``region_name``).
        catalogue: the prices; by default chosen from the chat model's provider: the Bedrock
            catalogue for Bedrock, genai-prices (ids ``provider:model``) for OpenAI, Anthropic's
            API, Vertex, Azure and the other providers it knows. Stages left with their default
            catalogue use this one.
        private_tags: tag keys kept in the ledger but left out of LangChain's run metadata,
            which tracers (LangSmith, say) send away.
    """

    def __init__(
        self,
        chat_model: Any,
        *,
        model_id: str | None = None,
        region: str | None = None,
        tier: Tier = "on_demand",
        catalogue: Catalogue | None = None,
        private_tags: Iterable[str] = (),
    ) -> None:
        self.private_tags = check_private_tags(private_tags, "LangChainModel")
        resolved = model_id or model_id_of(chat_model)
        if resolved is None:
            raise ConfigError(
                f"Cannot tell which model {type(chat_model).__name__} runs; pass "
                "LangChainModel(chat_model, model_id='<catalogue model id>') to price it."
            )
        if catalogue is None:
            catalogue, resolved = catalogue_and_id(chat_model, resolved)
        # An explicit id is what the caller says the calls cost: the reply's name never replaces
        # it (langchain-aws names the base model of a global profile the reply went through).
        self._explicit = model_id is not None
        self.chat_model = chat_model
        self.model_id = resolved
        self.catalogue = catalogue
        region_name = getattr(chat_model, "region_name", None)
        self.region = region or (region_name if isinstance(region_name, str) else None)
        self.tier: Tier = tier

    estimates_locally = True  # estimate() counts offline: the async path need not leave the loop

    def __repr__(self) -> str:
        return f"LangChainModel({type(self.chat_model).__name__}, model_id={self.model_id!r})"

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        """Invoke the chat model; ``metadata`` goes into LangChain's run metadata (tracing).

        Tags in ``private_tags`` are left out of it; chainkit's ``stage`` and ``request_id`` stay.
        """
        messages, config = self._input(prompt, metadata)
        started = time.perf_counter()
        try:
            reply = self.chat_model.invoke(messages, config=config, max_tokens=max_tokens)
        except Exception as exc:
            raise self._failed(exc) from exc
        return self._completion(reply, started)

    async def acomplete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        """:meth:`complete` through the chat model's ``ainvoke``."""
        messages, config = self._input(prompt, metadata)
        started = time.perf_counter()
        try:
            reply = await self.chat_model.ainvoke(messages, config=config, max_tokens=max_tokens)
        except Exception as exc:
            raise self._failed(exc) from exc
        return self._completion(reply, started)

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """The chat model's ``astream``: text chunks, then the usage its chunks reported.

        Usage arrives on the chunks (usually the last; integrations that split it are summed,
        as LangChain adds message chunks). A model that reports none in its stream (some need
        ``stream_usage=True``) ends without usage: the call is then recorded at its upper
        bound, marked estimated.
        """
        messages, config = self._input(prompt, metadata)
        total: Any = None
        try:
            async for piece in self.chat_model.astream(
                messages, config=config, max_tokens=max_tokens
            ):
                total = piece if total is None else total + piece
                text = _text_of(piece)
                if text:
                    yield Chunk(text)
        except Exception as exc:
            raise self._failed(exc) from exc
        usage = getattr(total, "usage_metadata", None)
        if usage:
            metadata_ = getattr(total, "response_metadata", {})
            yield Chunk(
                usage=usage_from_langchain(usage, self.model_id),
                model_id=self._reported(metadata_),
                unpriced=self._unpriced(usage, metadata_),
            )

    def _input(
        self, prompt: Prompt, metadata: Mapping[str, str] | None
    ) -> tuple[list[Any], dict[str, Any]]:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        messages: list[Any] = []
        if prompt.system:
            messages.append(SystemMessage(prompt.system))
        for role, text in prompt.messages():  # earlier turns with their roles, then the ask
            messages.append(HumanMessage(text) if role == "user" else AIMessage(text))
        private = self.private_tags
        sent = {
            key: value
            for key, value in (metadata or {}).items()
            if key not in private or key in METADATA_KEYS
        }
        return messages, {"metadata": sent}

    def _failed(self, exc: Exception) -> ProviderError:
        name = type(exc).__name__
        throttled = "RateLimit" in name or "Throttl" in name or "Throttl" in str(exc)
        cls = Throttled if throttled else ProviderError
        return cls(
            f"LangChain model {self.model_id!r} failed with {name}: {exc}",
            code=name,
            model_id=self.model_id,
        )

    def _reported(self, response_metadata: Any) -> str:
        """The id to price the call as: the one given, else the one the reply names."""
        reported = None if self._explicit else model_id_of(response_metadata)
        if reported is not None and ":" in self.model_id and ":" not in reported:
            # The catalogue names models provider:model; the reply names only the model.
            reported = f"{self.model_id.partition(':')[0]}:{reported}"
        return reported or self.model_id

    def _unpriced(self, usage: Any, response_metadata: Any) -> str:
        """Why the reply cannot be priced exactly (audio tokens, another service tier), or ""."""
        why = unpriced(usage)
        tier = service_tier_of(response_metadata, usage)
        if tier is not None and tier != self.tier:
            why = (f"{why} " if why else "") + (
                f"The reply says the call ran at service tier {tier!r} but the model is priced "
                f"as {self.tier!r}; pass LangChainModel(..., tier={tier!r}) to price it. The "
                "call's cost is unknown."
            )
        return why

    def _completion(self, reply: Any, started: float) -> Completion:
        reported_usage = getattr(reply, "usage_metadata", None)
        usage = usage_from_langchain(reported_usage, self.model_id)
        content = reply.content
        text = content if isinstance(content, str) else str(getattr(reply, "text", content))
        metadata_ = getattr(reply, "response_metadata", {})
        why = self._unpriced(reported_usage, metadata_)
        return Completion(
            text=text,
            usage=usage,
            model_id=self._reported(metadata_),
            latency_s=time.perf_counter() - started,
            unpriced=why,
        )

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Counted offline (LangChain has no generic pre-call token count) plus the budget."""
        inputs = count_tokens(prompt.system, self.model_id) + count_tokens(
            prompt.user, self.model_id
        )
        inputs += sum(count_tokens(t.text, self.model_id) for t in prompt.history)
        return Usage(inputs, max_tokens)
