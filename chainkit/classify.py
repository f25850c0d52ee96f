"""LocalClassifier: a trainable intent classifier that runs on the CPU and costs no tokens.

scikit-learn fits the model: TF-IDF of word 1-2-grams and of character 2-5-grams inside word
boundaries (sublinear tf, each block L2-normalised), then a multinomial logistic regression.
Prediction does not go through scikit-learn: its per-call overhead (input validation, two
sparse matrices, a sparse hstack) costs far more than the arithmetic for one short message. The
fitted vocabulary, idf and coefficients are exported, and ``predict`` sums the coefficient rows
of the n-grams present with dict lookups and numpy: scikit-learn's scores, to rounding.

The confidence is the softmax probability of the top class, with one addition for
out-of-scope detection: n-grams never seen in training are dropped by TF-IDF before
normalisation, so a text with one known word and five unknown ones scores as confidently as
the known word alone. Here the scores are multiplied by the text's *coverage* (the share of
its squared tf-idf weight on seen n-grams, unseen ones weighted with the largest idf), raised
to ``unseen_penalty``. Multiplying every score by one positive number is a softmax
temperature: the label never changes, only the confidence drops. With ``unseen_penalty=0``
the probabilities are scikit-learn's ``predict_proba``.

>>> texts = ["where is my parcel", "track my order", "has my package shipped",
...          "i want my money back", "refund my purchase", "can i get a refund"]
>>> labels = ["track_order"] * 3 + ["refund"] * 3
>>> clf = LocalClassifier().fit(texts, labels)
>>> clf.predict("where is my order").label
'track_order'
"""

from __future__ import annotations

import math
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from chainkit.errors import ConfigError
from chainkit.stages.intent_scan import Prediction

__all__ = ["LocalClassifier"]

# Chosen by the dev search in benchmarks/eval_classifier.py (CLINC150; Bitext ties).
_DEFAULT_C: Final = 30.0
_FORMAT: Final = "chainkit.LocalClassifier"
_VERSION: Final = 1

_ClassWeight = Literal["balanced"] | None


@dataclass(frozen=True, slots=True)
class _Block:
    """One TF-IDF block: its analyser, and its vocabulary as columns of the whole feature space."""

    analyse: Callable[[str], list[str]]
    vocabulary: dict[str, int]
    unseen_idf: float


@dataclass(frozen=True, slots=True)
class _Model:
    """The exported fitted model: everything ``predict`` reads, nothing from scikit-learn."""

    classes: tuple[str, ...]
    ngrams: tuple[tuple[int, int], tuple[int, int]]  # word, char: what the vocabulary holds
    blocks: tuple[_Block, ...]
    idf: NDArray[np.float64]  # (features,), both blocks' idf side by side
    weights: NDArray[np.float64]  # (features, classes): a feature's row is contiguous
    intercept: NDArray[np.float64]  # (classes,)


class _Header(BaseModel):
    """The JSON header of a saved classifier, validated on load."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["chainkit.LocalClassifier"]
    version: Literal[1]
    out_of_scope: str
    c: float = Field(gt=0)
    word_ngrams: tuple[int, int]
    char_ngrams: tuple[int, int]
    class_weight: Literal["balanced"] | None
    unseen_penalty: float = Field(ge=0)
    max_iter: int = Field(ge=1)
    threshold: float | None = Field(ge=0, le=1)
    classes: list[str] = Field(min_length=2)
    vocabularies: tuple[list[str], list[str]]


def _vectoriser(analyzer: Literal["word", "char_wb"], ngrams: tuple[int, int]) -> Any:
    # Built the same way for fitting and after load, so the analysers are identical.
    # scikit-learn is imported where it is used: it takes ~1.5 s, which `import chainkit`
    # should not pay for users who never train or load a classifier.
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True)


def _check_ngrams(name: str, ngrams: tuple[int, int]) -> tuple[int, int]:
    low, high = ngrams
    if not 1 <= low <= high:
        raise ConfigError(
            f"{name}={ngrams!r} is not an n-gram range: it needs 1 <= low <= high, "
            "for example (1, 2)."
        )
    return (int(low), int(high))


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(
            f"threshold={threshold!r} is not a confidence: use a number in [0, 1], "
            "or None to never answer out of scope."
        )
    return float(threshold)


class LocalClassifier:
    """Intent classifier trained locally: TF-IDF word and character n-grams, logistic regression.

    Args:
        out_of_scope: the label ``predict`` returns when the confidence is below ``threshold``.
            If the training labels contain it, it is also an ordinary class.
        c: inverse regularisation strength of the logistic regression (scikit-learn's ``C``).
        word_ngrams: range of word n-gram lengths.
        char_ngrams: range of character n-gram lengths, taken inside word boundaries.
        class_weight: ``"balanced"`` weighs each intent equally however many examples it has.
        unseen_penalty: power of the coverage that scales the scores (0: scikit-learn's
            probabilities exactly; larger: texts with unseen words get lower confidence).
        threshold: confidence below which ``predict`` answers ``out_of_scope``; None never does.
        max_iter: iteration limit of the solver.
    """

    def __init__(
        self,
        out_of_scope: str = "oos",
        *,
        c: float = _DEFAULT_C,
        word_ngrams: tuple[int, int] = (1, 2),
        char_ngrams: tuple[int, int] = (2, 5),
        class_weight: _ClassWeight = "balanced",
        unseen_penalty: float = 1.0,
        threshold: float | None = None,
        max_iter: int = 1000,
    ) -> None:
        if not c > 0:
            raise ConfigError(f"c={c!r} must be positive; the default is {_DEFAULT_C}.")
        if not unseen_penalty >= 0:
            raise ConfigError(
                f"unseen_penalty={unseen_penalty!r} must be >= 0; 0 turns the penalty off."
            )
        if class_weight not in ("balanced", None):
            raise ConfigError(f"class_weight={class_weight!r} must be 'balanced' or None.")
        if max_iter < 1:
            raise ConfigError(f"max_iter={max_iter!r} must be at least 1; the default is 1000.")
        self.out_of_scope = out_of_scope
        self.c = float(c)
        self.word_ngrams = _check_ngrams("word_ngrams", word_ngrams)
        self.char_ngrams = _check_ngrams("char_ngrams", char_ngrams)
        self.class_weight: _ClassWeight = class_weight
        self.unseen_penalty = float(unseen_penalty)
        self.max_iter = int(max_iter)
        self._threshold = _check_threshold(threshold)
        self._model: _Model | None = None
        self._pipeline: Any = None

    def __repr__(self) -> str:
        state = "unfitted" if self._model is None else f"{len(self._model.classes)} classes"
        return (
            f"LocalClassifier(out_of_scope={self.out_of_scope!r}, c={self.c}, "
            f"threshold={self._threshold}, {state})"
        )

    @property
    def threshold(self) -> float | None:
        """Confidence below which ``predict`` returns the out-of-scope label; None never does."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self._threshold = _check_threshold(value)

    @property
    def classes(self) -> tuple[str, ...]:
        """The labels the model can predict, in the order of ``predict_proba``'s columns."""
        return self._fitted("classes").classes

    @property
    def sklearn_pipeline(self) -> Any:
        """The fitted scikit-learn ``Pipeline`` this classifier exported (not kept by ``save``)."""
        if self._pipeline is None:
            raise ConfigError(
                "This LocalClassifier has no scikit-learn pipeline: only a classifier fitted in "
                "this process keeps one (load() rebuilds the fast model only). Call fit() first."
            )
        return self._pipeline

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> LocalClassifier:
        """Train on labelled texts with scikit-learn, then export the model; returns self."""
        texts, labels = list(texts), list(labels)
        if len(texts) != len(labels):
            raise ConfigError(
                f"fit got {len(texts)} texts but {len(labels)} labels; pass one label per text."
            )
        for name, values in (("texts", texts), ("labels", labels)):
            wrong = next((v for v in values if not isinstance(v, str)), None)
            if wrong is not None:
                raise ConfigError(
                    f"fit needs {name} as strings, got {type(wrong).__name__} {wrong!r}."
                )
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ConfigError(
                f"fit needs at least 2 distinct labels, got {len(classes)} ({classes!r}); "
                "add examples of another intent."
            )
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        pipeline = Pipeline(
            [
                (
                    "features",
                    FeatureUnion(
                        [
                            ("word", _vectoriser("word", self.word_ngrams)),
                            ("char", _vectoriser("char_wb", self.char_ngrams)),
                        ]
                    ),
                ),
                (
                    "model",
                    LogisticRegression(
                        C=self.c, class_weight=self.class_weight, max_iter=self.max_iter
                    ),
                ),
            ]
        )
        try:
            pipeline.fit(texts, labels)
        except ValueError as exc:  # e.g. "empty vocabulary": no text has a word or character
            raise ConfigError(
                f"fit could not learn from these {len(texts)} texts: {exc}. "
                "Check that the texts are non-empty sentences."
            ) from exc
        self._pipeline = pipeline
        self._model = _export(pipeline, (self.word_ngrams, self.char_ngrams))
        return self

    def predict(self, text: str) -> Prediction:
        """Label one text; below ``threshold`` the label is the out-of-scope label."""
        model = self._fitted("predict")
        index, confidence = _top(_scores(model, text, self.unseen_penalty))
        label = model.classes[index]
        if self._threshold is not None and confidence < self._threshold:
            label = self.out_of_scope
        return Prediction(label, confidence)

    def predict_many(self, texts: Sequence[str]) -> list[Prediction]:
        """Label many texts; the same predictions as calling ``predict`` on each."""
        self._fitted("predict_many")
        # Each text goes through predict's own arithmetic, so the results match it bit for bit;
        # the work is tokenising, which is per text anyway.
        predict = self.predict
        return [predict(text) for text in texts]

    def predict_proba(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """Probabilities of every class (columns in ``classes`` order), one row per text."""
        model = self._fitted("predict_proba")
        rows = np.empty((len(texts), len(model.classes)))
        for row, text in enumerate(texts):
            scores, temperature = _scores(model, text, self.unseen_penalty)
            exp = np.exp((scores - scores.max()) * temperature)
            rows[row] = exp / exp.sum()
        return rows

    def choose_threshold(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        *,
        out_of_scope: str | None = None,
        min_in_scope_accuracy: float | None = None,
        target_oos_recall: float | None = None,
    ) -> float:
        """Pick the threshold on labelled dev data, set it, and return it.

        Every threshold that changes a decision on the dev texts is scanned. In-scope accuracy
        counts an in-scope text as right only if it gets its own label, so rejecting it is an
        error (as in the CLINC150 paper); oos recall is the share of out-of-scope texts that get
        the out-of-scope label. Among the thresholds that meet the given constraints, the one
        with the highest in-scope accuracy + oos recall wins: with no stated preference both
        kinds of mistake weigh the same (balanced accuracy of the accept/reject decision), and
        each constraint states a preference. A tie goes to the lowest threshold. The chosen
        value lies halfway between two dev confidences rather than on one.

        Args:
            texts: dev texts, in-scope ones and out-of-scope ones.
            labels: their labels; out-of-scope texts carry ``out_of_scope``.
            out_of_scope: the label marking out-of-scope texts in ``labels`` (default: the
                classifier's own out-of-scope label).
            min_in_scope_accuracy: keep in-scope accuracy on dev at least this.
            target_oos_recall: keep oos recall on dev at least this.

        Raises:
            ConfigError: the dev data lacks in-scope or out-of-scope texts, has labels the model
                never saw, or no threshold meets the constraints.
        """
        model = self._fitted("choose_threshold")
        oos = self.out_of_scope if out_of_scope is None else out_of_scope
        texts, labels = list(texts), list(labels)
        if len(texts) != len(labels):
            raise ConfigError(
                f"choose_threshold got {len(texts)} texts but {len(labels)} labels; "
                "pass one label per text."
            )
        for name, value in (
            ("min_in_scope_accuracy", min_in_scope_accuracy),
            ("target_oos_recall", target_oos_recall),
        ):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value!r} is a share: use a number in [0, 1].")
        oos_names = {oos, self.out_of_scope}
        unknown = sorted(set(labels) - set(model.classes) - oos_names)
        if unknown:
            raise ConfigError(
                f"choose_threshold got labels the model was not trained on: {unknown[:5]!r}; "
                f"label out-of-scope dev texts {oos!r}, or fit on these intents too."
            )
        gold_oos = np.array([label in oos_names for label in labels], dtype=bool)
        if gold_oos.all() or not gold_oos.any():
            kind = "in-scope" if gold_oos.all() else f"out-of-scope (labelled {oos!r})"
            raise ConfigError(
                f"choose_threshold needs both in-scope and out-of-scope dev texts, but none of "
                f"the {len(texts)} texts is {kind}; add some."
            )

        tops = [_top(_scores(model, text, self.unseen_penalty)) for text in texts]
        confidence = np.array([conf for _, conf in tops])
        predicted = [model.classes[index] for index, _ in tops]
        predicted_oos = np.array([label in oos_names for label in predicted], dtype=bool)
        right = np.array([p == g for p, g in zip(predicted, labels, strict=True)], dtype=bool)
        right &= ~gold_oos & ~predicted_oos

        # Candidates: 0 (accept all), the midpoints between distinct dev confidences, and one
        # above them all (reject all). Accepting means confidence >= threshold.
        levels = np.unique(confidence)
        top = levels[-1]
        candidates = np.concatenate(
            [[0.0], (levels[:-1] + levels[1:]) / 2, [(top + 1.0) / 2 if top < 1.0 else 1.0]]
        )
        kept_right = np.sort(confidence[right])
        accuracy = (kept_right.size - np.searchsorted(kept_right, candidates, side="left")) / (
            (~gold_oos).sum()
        )
        missed = np.sort(confidence[gold_oos & ~predicted_oos])
        caught = (gold_oos & predicted_oos).sum() + np.searchsorted(missed, candidates, "left")
        recall = caught / gold_oos.sum()

        feasible = np.ones(candidates.size, dtype=bool)
        if min_in_scope_accuracy is not None:
            feasible &= accuracy >= min_in_scope_accuracy
        if target_oos_recall is not None:
            feasible &= recall >= target_oos_recall
        if not feasible.any():
            raise ConfigError(
                _infeasible(accuracy, recall, min_in_scope_accuracy, target_oos_recall)
            )
        balanced = np.where(feasible, accuracy + recall, -np.inf)
        self._threshold = float(candidates[int(np.argmax(balanced))])
        return self._threshold

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to one ``.npz`` file: numpy arrays plus a JSON header, no pickle."""
        model = self._fitted("save")
        vocabularies = []
        for block in model.blocks:
            terms = sorted(block.vocabulary, key=block.vocabulary.__getitem__)
            vocabularies.append(terms)
        header = _Header(
            format=_FORMAT,
            version=_VERSION,
            out_of_scope=self.out_of_scope,
            c=self.c,
            word_ngrams=model.ngrams[0],
            char_ngrams=model.ngrams[1],
            class_weight=self.class_weight,
            unseen_penalty=self.unseen_penalty,
            max_iter=self.max_iter,
            threshold=self._threshold,
            classes=list(model.classes),
            vocabularies=(vocabularies[0], vocabularies[1]),
        )
        encoded = np.frombuffer(header.model_dump_json().encode("utf-8"), dtype=np.uint8)
        # A file object, so numpy does not append ".npz" to a path that lacks it.
        with open(path, "wb") as file:
            np.savez(
                file,
                header=encoded,
                idf=model.idf,
                weights=model.weights,
                intercept=model.intercept,
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalClassifier:
        """Read a classifier written by ``save``; it predicts exactly as the saved one did."""
        try:
            # Our own file object: np.load leaks its handle when the zip is broken.
            with open(path, "rb") as file, np.load(file, allow_pickle=False) as data:
                header = _Header.model_validate_json(bytes(data["header"]).decode("utf-8"))
                idf = np.asarray(data["idf"], dtype=np.float64)
                weights = np.ascontiguousarray(data["weights"], dtype=np.float64)
                intercept = np.asarray(data["intercept"], dtype=np.float64)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"No saved classifier at {os.fspath(path)!r}: fit one and call .save(path) first, "
                "or check the path."
            ) from exc
        except (
            OSError,
            ValueError,  # includes pydantic's ValidationError and JSON/Unicode decode errors
            KeyError,
            TypeError,
            EOFError,
            zipfile.BadZipFile,
        ) as exc:
            raise ConfigError(
                f"{os.fspath(path)!r} is not a classifier saved by LocalClassifier.save "
                f"({type(exc).__name__}: {exc}); save it again from a fitted classifier."
            ) from exc
        features = sum(len(terms) for terms in header.vocabularies)
        shapes = {"idf": idf.shape, "weights": weights.shape, "intercept": intercept.shape}
        expected = {
            "idf": (features,),
            "weights": (features, len(header.classes)),
            "intercept": (len(header.classes),),
        }
        if shapes != expected:
            raise ConfigError(
                f"{os.fspath(path)!r} is inconsistent: array shapes {shapes} but its header "
                f"describes {expected}; save it again from a fitted classifier."
            )
        clf = cls(
            header.out_of_scope,
            c=header.c,
            word_ngrams=header.word_ngrams,
            char_ngrams=header.char_ngrams,
            class_weight=header.class_weight,
            unseen_penalty=header.unseen_penalty,
            threshold=header.threshold,
            max_iter=header.max_iter,
        )
        analysers = (
            _vectoriser("word", header.word_ngrams),
            _vectoriser("char_wb", header.char_ngrams),
        )
        blocks, offset = [], 0
        for vectoriser, terms in zip(analysers, header.vocabularies, strict=True):
            columns = range(offset, offset + len(terms))
            vocabulary = dict(zip(terms, columns, strict=True))
            unseen_idf = float(idf[offset : offset + len(terms)].max()) if terms else 1.0
            blocks.append(_Block(vectoriser.build_analyzer(), vocabulary, unseen_idf))
            offset += len(terms)
        clf._model = _Model(
            tuple(header.classes),
            (header.word_ngrams, header.char_ngrams),
            tuple(blocks),
            idf,
            weights,
            intercept,
        )
        return clf

    def _fitted(self, action: str) -> _Model:
        if self._model is None:
            raise ConfigError(
                f"LocalClassifier.{action} needs a fitted classifier: call "
                ".fit(texts, labels) or LocalClassifier.load(path) first."
            )
        return self._model


def _export(pipeline: Any, ngrams: tuple[tuple[int, int], tuple[int, int]]) -> _Model:
    """Copy what prediction needs out of a fitted scikit-learn pipeline."""
    union, regression = pipeline.named_steps["features"], pipeline.named_steps["model"]
    blocks, idfs, offset = [], [], 0
    for name, _ in union.transformer_list:
        fitted = union.named_transformers[name]
        idf = np.asarray(fitted.idf_, dtype=np.float64)
        vocabulary = {term: offset + int(column) for term, column in fitted.vocabulary_.items()}
        # An unseen n-gram is at least as rare as the rarest one seen in training.
        blocks.append(_Block(fitted.build_analyzer(), vocabulary, float(idf.max())))
        idfs.append(idf)
        offset += idf.size
    coef = np.asarray(regression.coef_, dtype=np.float64)
    intercept = np.asarray(regression.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:
        # Binary: scikit-learn keeps one score s and P(second class) = sigmoid(s), which is the
        # softmax of (-s/2, s/2); two columns let one code path serve every case.
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    classes = tuple(str(label) for label in regression.classes_)
    weights = np.ascontiguousarray(coef.T)
    return _Model(classes, ngrams, tuple(blocks), np.concatenate(idfs), weights, intercept)


def _scores(model: _Model, text: str, unseen_penalty: float) -> tuple[NDArray[np.float64], float]:
    """One text's class scores, and the factor its coverage puts on them (1 / temperature)."""
    columns: list[int] = []
    counts: list[int] = []
    spans: list[tuple[int, int, float]] = []
    log = math.log
    for block in model.blocks:
        get, start, unseen = block.vocabulary.get, len(columns), 0.0
        for gram, count in Counter(block.analyse(text)).items():
            column = get(gram)
            if column is None:
                unseen += 1.0 if count == 1 else (1.0 + log(count)) ** 2
            else:
                columns.append(column)
                counts.append(count)
        spans.append((start, len(columns), unseen * block.unseen_idf**2))
    index = np.array(columns, dtype=np.intp)
    values = np.log(np.array(counts, dtype=np.float64))
    values += 1.0  # sublinear tf, 1 + log(count), computed as scikit-learn does
    values *= model.idf[index]
    coverage, blocks_with_text = 0.0, 0
    for start, end, unseen_mass in spans:
        part = values[start:end]
        known_mass = float(part @ part)
        if known_mass > 0.0:
            part /= math.sqrt(known_mass)  # each block L2-normalised, as in the FeatureUnion
        if known_mass + unseen_mass > 0.0:
            coverage += known_mass / (known_mass + unseen_mass)
            blocks_with_text += 1
    # einsum, not the @ operator: @ hands this to BLAS, which splits it across threads once
    # the block is a few thousand numbers, and a thread that waits for a busy core costs ms.
    scores: NDArray[np.float64] = np.einsum("f,fc->c", values, model.weights[index])
    scores += model.intercept
    if not unseen_penalty:
        return scores, 1.0
    # A text with no n-grams at all has coverage 0: uniform probabilities.
    share = coverage / blocks_with_text if blocks_with_text else 0.0
    return scores, share**unseen_penalty


def _top(scored: tuple[NDArray[np.float64], float]) -> tuple[int, float]:
    """Index and softmax probability of the best class."""
    scores, temperature = scored
    # The label comes from the unscaled scores: with a factor of 0 they would all tie.
    index = int(scores.argmax())
    # exp(0) is exactly 1, so the top probability is 1 / sum.
    return index, float(1.0 / np.exp((scores - scores[index]) * temperature).sum())


def _infeasible(
    accuracy: NDArray[np.float64],
    recall: NDArray[np.float64],
    min_accuracy: float | None,
    target_recall: float | None,
) -> str:
    """Say why no threshold meets the constraints, with the best that the dev data allows."""
    wanted = []
    if min_accuracy is not None:
        wanted.append(f"in-scope accuracy >= {min_accuracy:.3f}")
    if target_recall is not None:
        wanted.append(f"oos recall >= {target_recall:.3f}")
    if target_recall is not None and (recall >= target_recall).any():
        best = f"at oos recall >= {target_recall:.3f} the best in-scope accuracy is " + (
            f"{accuracy[recall >= target_recall].max():.3f}"
        )
    elif min_accuracy is not None and (accuracy >= min_accuracy).any():
        best = f"at in-scope accuracy >= {min_accuracy:.3f} the best oos recall is " + (
            f"{recall[accuracy >= min_accuracy].max():.3f}"
        )
    else:
        best = f"the best in-scope accuracy is {accuracy.max():.3f}"
    return (
        f"No threshold gives {' and '.join(wanted)} on these dev texts: {best}. "
        "Relax a target, or add training examples."
    )
