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
from chainkit.records import Usage
from chainkit.tokens import count_tokens

__all__ = ["LangChainModel", "model_id_of", "usage_from_langchain"]

_MODEL_KEYS = ("model_id", "model_name", "model")


def usage_from_langchain(usage: Mapping[str, Any] | None, model_id: str) -> Usage:
    """Usage from an ``AIMessage.usage_metadata``, cached tokens taken out of ``input_tokens``."""
    if not usage:
        raise BadResponse(
            f"LangChain reply from model {model_id!r} has no usage_metadata; chainkit cannot "
            "price it. Use a chat model integration that reports usage (most do; streaming ones "
            "may need stream_usage=True).",
            code="MissingUsage",
            model_id=model_id,
        )
    details = usage.get("input_token_details") or {}
    cache_read = int(details.get("cache_read") or 0)
    five_minutes = int(details.get("ephemeral_5m_input_tokens") or 0)
    one_hour = int(details.get("ephemeral_1h_input_tokens") or 0)
    # With a TTL split, cache_creation is 0 (langchain-aws, langchain-anthropic) so that nothing is
    # counted twice; an integration that leaves the total there as well is read the same way.
    cache_write = max(int(details.get("cache_creation") or 0), five_minutes + one_hour)
    uncached = int(usage.get("input_tokens") or 0) - cache_read - cache_write
    if uncached < 0:
        raise BadResponse(
            f"LangChain usage from model {model_id!r} is inconsistent: input_tokens "
            f"{usage.get('input_tokens')} is less than its cached tokens "
            f"({cache_read} read + {cache_write} written).",
            code="MalformedUsage",
            model_id=model_id,
        )
    output = int(usage.get("output_tokens") or 0)
    return Usage(uncached, output, cache_read, cache_write, one_hour)


def _text_of(message: Any) -> str:
    """The text of a message chunk: its content, or the text blocks of a list content."""
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    text = getattr(message, "text", "")
    text = text() if callable(text) else text
    return text if isinstance(text, str) else ""


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
    provider = provider_of(chat_model)
    try:
        from chainkit.pricing_genai import genai_provider_for

        genai = genai_provider_for(provider)
    except ImportError:  # genai-prices not installed: only the bundled catalogues
        genai = None
    if genai is None:
        return Catalogue.load(), model_id
    priced_as = model_id if ":" in model_id else f"{genai}:{model_id}"
    return Catalogue.load("genai-prices"), priced_as


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
            reported = self._reported(getattr(total, "response_metadata", {}))
            yield Chunk(usage=usage_from_langchain(usage, self.model_id), model_id=reported)

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
        reported = model_id_of(response_metadata)
        if reported is not None and ":" in self.model_id and ":" not in reported:
            # The catalogue names models provider:model; the reply names only the model.
            reported = f"{self.model_id.partition(':')[0]}:{reported}"
        return reported or self.model_id

    def _completion(self, reply: Any, started: float) -> Completion:
        usage = usage_from_langchain(getattr(reply, "usage_metadata", None), self.model_id)
        content = reply.content
        text = content if isinstance(content, str) else str(getattr(reply, "text", content))
        return Completion(
            text=text,
            usage=usage,
            model_id=self._reported(getattr(reply, "response_metadata", {})),
            latency_s=time.perf_counter() - started,
        )

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Counted offline (LangChain has no generic pre-call token count) plus the budget."""
        inputs = count_tokens(prompt.system, self.model_id) + count_tokens(
            prompt.user, self.model_id
        )
        inputs += sum(count_tokens(t.text, self.model_id) for t in prompt.history)
        return Usage(inputs, max_tokens)
