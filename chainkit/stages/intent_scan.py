"""IntentScan: label each request with an intent, free (rules) or with a small model."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast, runtime_checkable

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.pricing import Catalogue, catalogue_for
from chainkit.providers.model import Model, Prompt
from chainkit.records import Request, check_text
from chainkit.stages.answering import record_free
from chainkit.stages.calling import DEFAULT_TIMEOUT_S, ModelCall, check_model, check_timeout

__all__ = [
    "Cascade",
    "Classifier",
    "IntentScan",
    "KeywordClassifier",
    "LLMClassifier",
    "Prediction",
    "PromptClassifier",
]


@dataclass(frozen=True, slots=True)
class Prediction:
    """A classifier's label for one text and its confidence in [0, 1]."""

    label: str
    confidence: float


@runtime_checkable
class Classifier(Protocol):
    """A classifier that costs no tokens: rules, or a model trained locally."""

    def predict(self, text: str) -> Prediction:
        """Label ``text``."""
        ...


@runtime_checkable
class PromptClassifier(Protocol):
    """A classifier that asks a model: it builds the prompt and parses the reply."""

    # Read-only properties, so that frozen classifiers (LLMClassifier) satisfy the protocol.
    @property
    def model(self) -> Model:
        """The model asked."""
        ...

    @property
    def max_tokens(self) -> int:
        """The most the model may answer with."""
        ...

    def prompt(self, text: str) -> Prompt:
        """The prompt that asks the model to label ``text``."""
        ...

    def parse(self, reply: str) -> Prediction:
        """Turn the model's reply into a validated prediction."""
        ...


@dataclass(frozen=True)
class KeywordClassifier:
    """Keyword rules: the first intent with a matching keyword or phrase wins (whole words).

    >>> rules = KeywordClassifier({"greeting": ["hello", "hi there"], "track_order": ["where is"]})
    >>> rules.predict("Hello! Where is my parcel?")
    Prediction(label='greeting', confidence=1.0)
    >>> rules.predict("I want a refund").label
    'unknown'
    """

    rules: Mapping[str, Sequence[str]]
    default: str = "unknown"
    _patterns: tuple[tuple[str, re.Pattern[str]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        patterns = tuple(
            (intent, re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.I))
            for intent, words in self.rules.items()
            if words
        )
        object.__setattr__(self, "_patterns", patterns)

    def predict(self, text: str) -> Prediction:
        """Return the first matching intent with confidence 1, else the default with 0."""
        for intent, pattern in self._patterns:
            if pattern.search(text):
                return Prediction(intent, 1.0)
        return Prediction(self.default, 0.0)


@dataclass(frozen=True)
class LLMClassifier:
    r"""Ask a (small) model to pick one label; a reply outside the label set becomes the default.

    >>> from chainkit.providers import ScriptedModel
    >>> clf = LLMClassifier(ScriptedModel(model_id="generic.intent"), ["refund", "track_order"])
    >>> clf.parse(" Track_Order.\n")
    Prediction(label='track_order', confidence=1.0)
    >>> clf.parse("I think it is about shipping")
    Prediction(label='unknown', confidence=0.0)
    """

    model: Model
    labels: Sequence[str]
    default: str = "unknown"
    max_tokens: int = 10
    instruction: str = (
        "Classify the customer's message into exactly one intent from this list, or "
        "'{default}' if none fits. Answer with the intent name only.\nIntents: {labels}"
    )

    def prompt(self, text: str) -> Prompt:
        """List the labels in the system prompt; the message is the user turn."""
        system = self.instruction.format(default=self.default, labels=", ".join(self.labels))
        return Prompt(system, text)

    def parse(self, reply: str) -> Prediction:
        """Accept the reply only if it names a known label (case and punctuation ignored)."""
        words = reply.strip().lower().split()
        answer = words[0].strip(" .,:;'\"`") if words else ""
        if answer in self.labels:
            return Prediction(answer, 1.0)
        return Prediction(self.default, 0.0)


@dataclass(frozen=True)
class Cascade:
    """A free classifier first; a model only when the free one is not confident enough.

    >>> from chainkit.providers import ScriptedModel
    >>> rules = KeywordClassifier({"greeting": ["hello"]})
    >>> llm = LLMClassifier(ScriptedModel(model_id="generic.intent", reply="refund"), ["refund"])
    >>> cascade = Cascade(rules, llm, min_confidence=0.5)
    """

    first: Classifier
    then: PromptClassifier
    min_confidence: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(
                f"Cascade min_confidence must be within [0, 1], got {self.min_confidence!r}."
            )


@dataclass(frozen=True, kw_only=True)
class IntentScan:
    """Label the request's intent; a free entry for local classifiers, a priced one for a model.

    With ``min_confidence``, a prediction less confident than that leaves the intent unset
    (``None``), so no canned or precomputed reply answers it and it goes on to the model; the
    label is kept on the entry for analysis. Labels in ``trusted`` (such as an out-of-scope label
    that a classifier assigns *because* it is unsure) are never unset.
    """

    classifier: Classifier | PromptClassifier | Cascade
    min_confidence: float = 0.0
    trusted: tuple[str, ...] = ()
    catalogue: Catalogue = field(default_factory=Catalogue.load)
    name: str = "intent_scan"
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    _asks_model: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_text(self.name, "stage name")
        check_timeout(self.timeout_s, self.name)
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(
                f"IntentScan min_confidence must be within [0, 1], got {self.min_confidence!r}."
            )
        classifier = self.classifier
        if isinstance(classifier, Cascade):
            classifier = classifier.then
        # isinstance against a Protocol costs ~20 µs: decide once here, not on every request.
        asks_model = isinstance(self.classifier, PromptClassifier)
        object.__setattr__(self, "_asks_model", asks_model)
        if isinstance(classifier, PromptClassifier):
            object.__setattr__(self, "catalogue", catalogue_for(classifier.model, self.catalogue))
            check_model(classifier.model, self.catalogue, self.name)

    def _ask(self, classifier: PromptClassifier, request: Request, ledger: Ledger) -> Prediction:
        call = ModelCall(
            stage=self.name,
            model=classifier.model,
            catalogue=self.catalogue,
            prompt=classifier.prompt(request.text),
            max_tokens=classifier.max_tokens,
            request=request,
            ledger=ledger,
            timeout_s=self.timeout_s,
        )
        with call as completion:
            prediction = classifier.parse(completion.text)
            call.record("passed", intent=prediction.label)
        return prediction

    async def _aask(
        self, classifier: PromptClassifier, request: Request, ledger: Ledger
    ) -> Prediction:
        call = ModelCall(
            stage=self.name,
            model=classifier.model,
            catalogue=self.catalogue,
            prompt=classifier.prompt(request.text),
            max_tokens=classifier.max_tokens,
            request=request,
            ledger=ledger,
            timeout_s=self.timeout_s,
        )
        async with call as completion:
            prediction = classifier.parse(completion.text)
            await call.arecord("passed", intent=prediction.label)
        return prediction

    async def arun(self, request: Request, ledger: Ledger) -> Request:
        """:meth:`run` on the event loop: a model is awaited, a local classifier runs inline."""
        classifier = self.classifier
        if isinstance(classifier, Cascade):
            started = time.perf_counter()
            prediction = classifier.first.predict(request.text)
            if prediction.confidence < classifier.min_confidence:
                prediction = await self._aask(classifier.then, request, ledger)
            else:
                record_free(self.name, request, ledger, started=started, intent=prediction.label)
        elif self._asks_model:
            prediction = await self._aask(cast(PromptClassifier, classifier), request, ledger)
        else:
            prediction = self._predict(cast(Classifier, classifier), request, ledger)
        return self._labelled(request, prediction)

    def _labelled(self, request: Request, prediction: Prediction) -> Request:
        intent: str | None = prediction.label
        if prediction.confidence < self.min_confidence and intent not in self.trusted:
            intent = None
        return dataclasses.replace(request, intent=intent, confidence=prediction.confidence)

    def _predict(self, classifier: Classifier, request: Request, ledger: Ledger) -> Prediction:
        started = time.perf_counter()
        prediction = classifier.predict(request.text)
        record_free(self.name, request, ledger, started=started, intent=prediction.label)
        return prediction

    def run(self, request: Request, ledger: Ledger) -> Request:
        """Return the request with ``intent`` and ``confidence`` set."""
        classifier = self.classifier
        if isinstance(classifier, Cascade):
            # Only the free classifier's entry is written when it is confident; otherwise the
            # model's entry is the stage's one entry, so the stage never writes two.
            started = time.perf_counter()
            prediction = classifier.first.predict(request.text)
            if prediction.confidence < classifier.min_confidence:
                prediction = self._ask(classifier.then, request, ledger)
            else:
                record_free(self.name, request, ledger, started=started, intent=prediction.label)
        elif self._asks_model:
            prediction = self._ask(cast(PromptClassifier, classifier), request, ledger)
        else:
            prediction = self._predict(cast(Classifier, classifier), request, ledger)
        return self._labelled(request, prediction)
