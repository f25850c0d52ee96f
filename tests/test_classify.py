import itertools
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion

from chainkit import IntentScan, Ledger, Request, classify
from chainkit.classify import LocalClassifier
from chainkit.errors import ConfigError
from chainkit.stages.intent_scan import Classifier, Prediction

TRAIN = {
    "track_order": [
        "where is my order",
        "where is my parcel",
        "track my package",
        "has my order shipped yet",
        "when will my delivery arrive",
        "i want to know the status of my order",
        "can you tell me where my package is",
        "my parcel has not arrived",
        "order tracking please",
        "what is the delivery status of my purchase",
        "is my shipment on its way",
        "when does my order get here",
    ],
    "refund": [
        "i want my money back",
        "refund my purchase",
        "can i get a refund",
        "how do i return this item for a refund",
        "please give me a refund",
        "i was charged but want a refund",
        "request a refund for my order",
        "money back for the broken item",
        "how long does a refund take",
        "i would like to be reimbursed",
        "return the product and refund me",
        "refund the payment please",
    ],
    "greeting": [
        "hello",
        "hi there",
        "good morning",
        "hey",
        "hello how are you",
        "hi",
        "good evening",
        "hey there friend",
        "greetings",
        "morning",
        "howdy",
        "hello there",
    ],
    "change_password": [
        "i forgot my password",
        "reset my password",
        "how do i change my password",
        "i cannot log in with my password",
        "update the password on my account",
        "password reset please",
        "i need a new password",
        "my password does not work",
        "change account password",
        "help me recover my password",
        "set a different password",
        "lost my login password",
    ],
}
HELD_OUT = [
    ("where's my package right now", "track_order"),
    ("my order still has not arrived", "track_order"),
    ("i would like a refund please", "refund"),
    ("give me my money back", "refund"),
    ("hello there how are you", "greeting"),
    ("hey good morning", "greeting"),
    ("i forgot the password for my account", "change_password"),
    ("how can i reset my password", "change_password"),
]
OOS_DEV = [
    "what is the capital of peru",
    "play some jazz music",
    "tell me a joke about cats",
    "how tall is mount everest",
    "what will the weather be tomorrow",
    "recommend a good sci fi novel",
]
IN_SCOPE_DEV = [
    "track my parcel",
    "where is my delivery",
    "i want a refund",
    "refund please",
    "hi there",
    "good morning",
    "reset my password",
    "i forgot my password",
]


def training() -> tuple[list[str], list[str]]:
    texts = [text for examples in TRAIN.values() for text in examples]
    labels = [label for label, examples in TRAIN.items() for _ in examples]
    return texts, labels


def probes() -> list[str]:
    """A few hundred texts: training, held-out, off-topic, pairs of them, unseen words, edges."""
    singles = [*training()[0], *(t for t, _ in HELD_OUT), *OOS_DEV, *IN_SCOPE_DEV]
    pairs = [f"{a} and {b}" for a, b in itertools.islice(itertools.combinations(singles, 2), 250)]
    edges = ["", "   ", "?", "a", "zzzz qqqq", "WHERE IS MY ORDER!!!", "héllo ça va", "order order"]
    return singles + pairs + edges


def assert_same_predictions(many: list[Prediction], ones: list[Prediction]) -> None:
    """The same labels, and confidences within 1e-12 (the batch sums in another order)."""
    assert [p.label for p in many] == [p.label for p in ones]
    assert (
        max((abs(a.confidence - b.confidence) for a, b in zip(many, ones, strict=True)), default=0)
        <= 1e-12
    )


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def scoring_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both scoring paths: numba's compiled loop and the numpy one."""
    if request.param == "numpy":
        monkeypatch.setitem(classify._kernel_state, "module", None)
    elif classify._kernel() is None:
        pytest.skip("numba is not installed (the fast extra): only the numpy path runs")
    return str(request.param)


@pytest.fixture(scope="module")
def clf() -> LocalClassifier:
    return LocalClassifier(threshold=None).fit(*training())


def test_satisfies_the_intent_scan_classifier_protocol(clf: LocalClassifier) -> None:
    assert isinstance(clf, Classifier)


def test_predicts_held_out_paraphrases(clf: LocalClassifier) -> None:
    predicted = [clf.predict(text).label for text, _ in HELD_OUT]

    assert predicted == [label for _, label in HELD_OUT]


def test_predict_many_equals_predict_one_by_one(clf: LocalClassifier) -> None:
    texts = probes()

    assert_same_predictions(clf.predict_many(texts), [clf.predict(text) for text in texts])


def test_confidence_is_a_probability(clf: LocalClassifier) -> None:
    predictions = clf.predict_many(probes())

    assert all(isinstance(p, Prediction) for p in predictions)
    assert all(0.0 <= p.confidence <= 1.0 for p in predictions)
    # No n-gram at all carries no evidence: every class equally likely.
    assert clf.predict("").confidence == pytest.approx(1 / len(TRAIN))


def test_below_threshold_answers_out_of_scope() -> None:
    clf = LocalClassifier(out_of_scope="unknown", threshold=None).fit(*training())
    confident = clf.predict("where is my order")
    assert confident.label == "track_order"

    clf.threshold = confident.confidence + 1e-9
    assert clf.predict("where is my order") == Prediction("unknown", confident.confidence)
    clf.threshold = confident.confidence
    assert clf.predict("where is my order") == confident
    clf.threshold = None
    assert clf.predict("where is my order") == confident


def test_choose_threshold_rejects_off_topic_texts_and_keeps_in_scope_ones() -> None:
    clf = LocalClassifier(threshold=None).fit(*training())
    texts = IN_SCOPE_DEV + OOS_DEV
    labels = [clf.predict(text).label for text in IN_SCOPE_DEV] + ["oos"] * len(OOS_DEV)

    threshold = clf.choose_threshold(texts, labels)

    assert clf.threshold == threshold
    assert 0.0 < threshold < 1.0
    assert [clf.predict(text).label for text in OOS_DEV] == ["oos"] * len(OOS_DEV)
    assert [clf.predict(text).label for text in IN_SCOPE_DEV] == labels[: len(IN_SCOPE_DEV)]


def test_choose_threshold_respects_constraints() -> None:
    clf = LocalClassifier(threshold=None).fit(*training())
    texts = IN_SCOPE_DEV + OOS_DEV
    in_scope_labels = [clf.predict(text).label for text in IN_SCOPE_DEV]
    labels = in_scope_labels + ["oos"] * len(OOS_DEV)

    clf.choose_threshold(texts, labels, min_in_scope_accuracy=1.0)
    assert [clf.predict(text).label for text in IN_SCOPE_DEV] == in_scope_labels

    clf.choose_threshold(texts, labels, target_oos_recall=1.0)
    assert [clf.predict(text).label for text in OOS_DEV] == ["oos"] * len(OOS_DEV)


def test_choose_threshold_counts_a_rejected_in_scope_text_as_wrong() -> None:
    clf = LocalClassifier(threshold=None).fit(*training())
    # A training sentence labelled out of scope: rejecting it rejects less confident in-scope
    # texts too, so full recall and full in-scope accuracy cannot both hold.
    texts = [*IN_SCOPE_DEV, "where is my parcel"]
    labels = [clf.predict(text).label for text in IN_SCOPE_DEV] + ["oos"]
    assert min(clf.predict(t).confidence for t in IN_SCOPE_DEV) < clf.predict(texts[-1]).confidence

    with pytest.raises(
        ConfigError,
        match=r"No threshold gives in-scope accuracy >= 1\.000 and oos recall >= 1\.000 on these "
        r"dev texts: at oos recall >= 1\.000 the best in-scope accuracy is 0\.\d+",
    ):
        clf.choose_threshold(texts, labels, min_in_scope_accuracy=1.0, target_oos_recall=1.0)
    assert clf.threshold is None


def test_intent_scan_stage_uses_it(clf: LocalClassifier) -> None:
    ledger = Ledger()

    out = IntentScan(classifier=clf).run(Request("where is my parcel"), ledger)

    assert out.intent == "track_order"
    assert out.confidence == clf.predict("where is my parcel").confidence
    [entry] = ledger.entries()
    assert (entry.stage, entry.intent, entry.cost) == ("intent_scan", "track_order", Decimal(0))


def test_out_of_scope_training_label_is_an_ordinary_class() -> None:
    texts, labels = training()
    texts += OOS_DEV
    labels += ["oos"] * len(OOS_DEV)

    clf = LocalClassifier(threshold=None).fit(texts, labels)

    assert "oos" in clf.classes
    assert clf.predict("what is the capital of peru").label == "oos"
    assert clf.predict("where is my parcel").label == "track_order"


def with_oos() -> tuple[list[str], list[str]]:
    texts, labels = training()
    return [*texts, *OOS_DEV], [*labels, *["oos"] * len(OOS_DEV)]


def test_an_out_of_scope_class_lowers_in_scope_answers_by_a_power_of_p_in_scope() -> None:
    clf = LocalClassifier(threshold=None).fit(*with_oos())
    plain = LocalClassifier(threshold=None, out_of_scope="never a label").fit(*with_oos())
    texts = probes()
    oos = clf.classes.index("oos")

    proba = clf.predict_proba(texts)
    got = clf.predict_many(texts)

    best = np.array([clf.classes.index(p.label) for p in got])
    top = proba[np.arange(len(texts)), best]  # the label's probability (ties: "" has them all)
    in_scope = 1.0 - proba[:, oos]
    expected = np.where(best == oos, top, top * in_scope**classify._IN_SCOPE_POWER)
    np.testing.assert_allclose([p.confidence for p in got], expected, rtol=1e-9, atol=1e-15)
    # The same model read as plain classes: the labels agree, the confidence is the top
    # probability, and the in-scope answers are more confident there.
    assert [p.label for p in plain.predict_many(texts)] == [p.label for p in got]
    np.testing.assert_allclose([p.confidence for p in plain.predict_many(texts)], top, rtol=1e-12)
    assert (best == oos).any() and (in_scope[best != oos] < 0.99).any()


def test_an_out_of_scope_class_falls_below_the_threshold_it_calibrates() -> None:
    clf = LocalClassifier().fit(*with_oos())  # "auto": calibrated on held-out in-scope texts
    assert clf.threshold is not None
    assert clf.predict("what is the capital of peru").label == "oos"
    assert clf.predict("where is my parcel").label == "track_order"


def test_a_version_2_file_with_an_out_of_scope_class_keeps_its_plain_confidence(
    tmp_path: Path,
) -> None:
    clf = LocalClassifier(threshold=None).fit(*with_oos())
    path = tmp_path / "v3.npz"
    clf.save(path)
    assert_same_predictions(
        LocalClassifier.load(path).predict_many(probes()), clf.predict_many(probes())
    )
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    assert (header["version"], header["rejected"]) == (3, clf.classes.index("oos"))
    header["version"] = 2
    del header["rejected"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    old = tmp_path / "v2.npz"
    np.savez(old, **arrays)

    loaded = LocalClassifier.load(old)

    # Saved before out-of-scope classes lowered confidence: its threshold was set on the plain
    # top probability, so it keeps scoring that way.
    got = loaded.predict_many(probes())
    proba = clf.predict_proba(probes())
    best = [clf.classes.index(p.label) for p in got]
    assert [p.label for p in got] == [p.label for p in clf.predict_many(probes())]
    np.testing.assert_allclose(
        [p.confidence for p in got], proba[np.arange(len(best)), best], rtol=1e-12
    )
    # Saved again, it stays what it was: a version 3 file that lowers nothing.
    again = tmp_path / "again.npz"
    loaded.save(again)
    assert LocalClassifier.load(again).predict_many(probes()) == got


def test_what_lowers_confidence_is_saved_not_derived_from_the_out_of_scope_label(
    tmp_path: Path,
) -> None:
    clf = LocalClassifier(threshold=None).fit(*with_oos())
    expected = clf.predict_many(probes())
    clf.out_of_scope = "refused"  # the label below a threshold, renamed after fit
    path = tmp_path / "renamed.npz"
    clf.save(path)

    loaded = LocalClassifier.load(path)

    assert loaded.out_of_scope == "refused"
    assert loaded.predict_many(probes()) == clf.predict_many(probes()) == expected


@pytest.mark.parametrize(
    ("rejected", "said"),
    [(5, "rejected class 5 is not one of its 5"), (-2, "greater than or equal to -1")],
)
def test_a_rejected_class_out_of_range_is_damage(tmp_path: Path, rejected: int, said: str) -> None:
    clf = LocalClassifier(threshold=None).fit(*with_oos())
    path = tmp_path / "m.npz"
    clf.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    header["rejected"] = rejected
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    np.savez(path, **arrays)

    with pytest.raises(ConfigError, match=said):
        LocalClassifier.load(path)


def test_save_and_load_give_identical_predictions(clf: LocalClassifier, tmp_path: Path) -> None:
    clf.threshold = 0.4
    path = tmp_path / "intents.model"  # no .npz suffix: save must not add one
    try:
        clf.save(path)
    finally:
        clf.threshold = None
    loaded = LocalClassifier.load(path)

    assert loaded.threshold == 0.4
    assert loaded.classes == clf.classes
    assert (loaded.out_of_scope, loaded.c, loaded.unseen_penalty) == ("oos", clf.c, 1.0)
    clf.threshold = 0.4
    try:
        assert loaded.predict_many(probes()) == clf.predict_many(probes())
    finally:
        clf.threshold = None
    np.testing.assert_array_equal(loaded.predict_proba(probes()), clf.predict_proba(probes()))


def test_saved_file_has_no_pickle(clf: LocalClassifier, tmp_path: Path) -> None:
    path = tmp_path / "intents.npz"
    clf.save(path)

    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["header", "idf", "intercept", "weights"]
        header = json.loads(bytes(data["header"]).decode("utf-8"))
    assert header["format"] == "chainkit.LocalClassifier"
    assert header["classes"] == sorted(TRAIN)


def sklearn_features(texts: list[str]) -> FeatureUnion:
    """scikit-learn's own features of the model: what LocalClassifier reimplements."""
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    ).fit(texts)


def softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_features_equal_sklearn_tfidf() -> None:
    exact = LocalClassifier(unseen_penalty=0, threshold=None).fit(*training())
    features = sklearn_features(training()[0])
    texts = probes()
    assert len(texts) > 300

    weights, intercept = exact_weights(exact, features)
    theirs = softmax(features.transform(texts) @ weights + intercept)

    np.testing.assert_allclose(exact.predict_proba(texts), theirs, rtol=0, atol=1e-12)


def exact_weights(clf: LocalClassifier, features: FeatureUnion) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's weights in scikit-learn's column order (the same vocabulary)."""
    path_model = clf._model
    assert path_model is not None
    names = [
        *features.transformer_list[0][1].get_feature_names_out(),
        *features.transformer_list[1][1].get_feature_names_out(),
    ]
    assert names == [*path_model.terms[0], *path_model.terms[1]]
    return path_model.weights, path_model.intercept


def objective(
    features: np.ndarray, targets: np.ndarray, weights: np.ndarray, b: np.ndarray
) -> float:
    """scikit-learn's LogisticRegression objective (balanced weights, C=30), multinomial."""
    n, k = len(targets), weights.shape[1]
    scores = features @ weights + b
    top = scores.max(axis=1)
    loss = top + np.log(np.exp(scores - top[:, None]).sum(axis=1)) - scores[np.arange(n), targets]
    sample = (n / (k * np.bincount(targets)))[targets]
    return float(sample @ loss / sample.sum() + (weights**2).sum() / (2 * 30.0 * n))


def test_solution_is_at_least_as_good_as_sklearns() -> None:
    texts, labels = training()
    ours = LocalClassifier(unseen_penalty=0, threshold=None).fit(texts, labels)
    features = sklearn_features(texts)
    matrix = features.transform(texts)
    theirs = LogisticRegression(C=30.0, class_weight="balanced", max_iter=1000).fit(matrix, labels)
    targets = np.array([ours.classes.index(label) for label in labels])

    weights, intercept = exact_weights(ours, features)
    mine = objective(matrix, targets, weights, intercept)
    reference = objective(matrix, targets, theirs.coef_.T, theirs.intercept_)

    assert mine <= reference + 1e-9
    held_out = [text for text, _ in HELD_OUT]
    assert [p.label for p in ours.predict_many(held_out)] == list(
        theirs.predict(features.transform(held_out))
    )


def test_unseen_penalty_keeps_labels_and_lowers_confidence(clf: LocalClassifier) -> None:
    texts = probes()
    exact = LocalClassifier(unseen_penalty=0, threshold=None).fit(*training())

    assert [p.label for p in clf.predict_many(texts)] == [
        p.label for p in exact.predict_many(texts)
    ]
    # A text whose n-grams were all seen is unchanged; unseen words only lower the confidence.
    assert clf.predict("where is my order") == exact.predict("where is my order")
    padded = "where is my order xylophone quasar"
    assert clf.predict(padded).confidence < exact.predict(padded).confidence


def test_two_classes_match_sklearns_binomial_model() -> None:
    texts = TRAIN["refund"] + TRAIN["greeting"]
    labels = ["refund"] * 12 + ["greeting"] * 12
    clf = LocalClassifier(unseen_penalty=0, threshold=None).fit(texts, labels)
    features = sklearn_features(texts)
    reference = LogisticRegression(C=30.0, class_weight="balanced", max_iter=10_000, tol=1e-10).fit(
        features.transform(texts), labels
    )

    # Both stop at a gradient of 1e-4 or less, where this small flat problem still leaves the
    # probabilities a little apart; the labels agree.
    theirs = reference.predict_proba(features.transform(probes()))
    np.testing.assert_allclose(clf.predict_proba(probes()), theirs, atol=0.02)
    assert [p.label for p in clf.predict_many(probes())] == list(
        reference.classes_[theirs.argmax(axis=1)]
    )
    assert clf.predict("can i get my money back").label == "refund"


def test_fit_rejects_mismatched_lengths() -> None:
    with pytest.raises(ConfigError, match="3 texts but 2 labels; pass one label per text"):
        LocalClassifier().fit(["a b", "c d", "e f"], ["x", "y"])


def test_fit_needs_two_classes() -> None:
    with pytest.raises(ConfigError, match=r"at least 2 distinct labels, got 1 \(\['refund'\]\)"):
        LocalClassifier().fit(TRAIN["refund"], ["refund"] * 12)


def test_fit_rejects_texts_with_nothing_to_learn() -> None:
    with pytest.raises(ConfigError, match="could not learn from these 2 texts"):
        LocalClassifier().fit(["", " "], ["x", "y"])


def test_a_calibration_split_with_nothing_to_learn_says_so() -> None:
    texts = ["hello"] + ["!"] * 9 + ["?"] * 10
    labels = ["a"] * 10 + ["b"] * 10
    LocalClassifier(threshold=None).fit(texts, labels)  # the whole set has a word to learn

    with pytest.raises(ConfigError, match=r"could not calibrate.*seed=8.*threshold=None"):
        LocalClassifier(seed=8).fit(texts, labels)


def test_predict_before_fit_says_what_to_call() -> None:
    with pytest.raises(ConfigError, match=r"predict needs a fitted classifier: call \.fit"):
        LocalClassifier().predict("hello")
    with pytest.raises(ConfigError, match="save needs a fitted classifier"):
        LocalClassifier().save("never.npz")


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"threshold=1.5 is not a confidence"):
        LocalClassifier(threshold=1.5)
    with pytest.raises(ConfigError, match=r"word_ngrams=\(2, 1\) is not an n-gram range"):
        LocalClassifier(word_ngrams=(2, 1))
    with pytest.raises(ConfigError, match="c=0 must be a positive number"):
        LocalClassifier(c=0)
    clf = LocalClassifier()
    with pytest.raises(ConfigError, match=r"threshold=-0\.1 is not a confidence"):
        clf.threshold = -0.1


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"word_ngrams": "ab"}, "word_ngrams='ab'"),
        ({"word_ngrams": ("1", "2")}, "word_ngrams=('1', '2')"),
        ({"word_ngrams": (1, 2, 3)}, "word_ngrams=(1, 2, 3)"),
        ({"word_ngrams": None}, "word_ngrams=None"),
        ({"char_ngrams": (2, float("inf"))}, "char_ngrams=(2, inf)"),
        ({"char_ngrams": (True, 2)}, "char_ngrams=(True, 2)"),
        ({"c": "x"}, "c='x'"),
        ({"c": float("nan")}, "c=nan"),
        ({"unseen_penalty": "x"}, "unseen_penalty='x'"),
        ({"unseen_penalty": float("inf")}, "unseen_penalty=inf"),
        ({"max_iter": None}, "max_iter=None"),
        ({"max_iter": 2.5}, "max_iter=2.5"),
        ({"seed": None}, "seed=None"),
        ({"seed": -1}, "seed=-1"),
        ({"out_of_scope": 5}, "out_of_scope=5"),
    ],
)
def test_every_bad_setting_is_one_config_error_naming_it(
    settings: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalClassifier(**settings)  # type: ignore[arg-type]

    assert named in str(caught.value)


def test_texts_are_cut_to_max_chars_everywhere_alike(
    clf: LocalClassifier, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    long = "where is my order " + "zq" * 60_000  # 120,018 characters
    cut = long[:100_000]

    assert clf.max_chars == 100_000
    assert clf.predict(long) == clf.predict(cut)
    assert clf.predict_many([long, "hi"]) == clf.predict_many([cut, "hi"])
    np.testing.assert_array_equal(clf.predict_proba([long]), clf.predict_proba([cut]))
    clf.save(tmp_path / "cut.npz")
    assert LocalClassifier.load(tmp_path / "cut.npz").max_chars == 100_000
    monkeypatch.setattr(clf, "max_chars", None)
    assert clf.predict(long) != clf.predict(cut)
    with pytest.raises(ConfigError, match="max_chars=0 must be a whole number"):
        LocalClassifier(max_chars=0)


def test_a_batch_is_chunked_by_characters_too(
    clf: LocalClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = probes()
    whole = clf.predict_many(texts)
    monkeypatch.setattr("chainkit.classify._CHUNK_CHARS", 50)
    calls = []
    chunk = classify._score_chunk
    monkeypatch.setattr(
        "chainkit.classify._score_chunk", lambda *args: calls.append(len(args[1])) or chunk(*args)
    )

    assert clf.predict_many(texts) == whole
    assert sum(calls) == len(texts)
    assert max(calls) < 10  # about 50 characters a chunk, one text at least


@pytest.mark.parametrize("text", [None, 123, b"hi", ["a"]])
def test_predict_takes_only_a_string(clf: LocalClassifier, text: object) -> None:
    with pytest.raises(ConfigError, match="takes one text"):
        clf.predict(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("texts", "said"),
    [
        ("refund", "got one string 'refund'"),
        (None, "got NoneType"),
        (5, "got int"),
        (["a", 5], "text 1 is int"),
        (["a", None], "text 1 is NoneType"),
        ([b"hi"], "text 0 is bytes"),
    ],
)
def test_batch_calls_take_only_lists_of_strings(
    clf: LocalClassifier, texts: object, said: str
) -> None:
    for call in (clf.predict_many, clf.predict_proba):
        with pytest.raises(ConfigError, match=re.escape(said)):
            call(texts)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=re.escape(said)):
        clf.choose_threshold(texts, ["x"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=re.escape(said)):
        LocalClassifier().fit(texts, ["x", "y"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="target_oos_recall='a' must be a share"):
        clf.choose_threshold(["a", "b"], ["x", "y"], target_oos_recall="a")  # type: ignore[arg-type]


def test_choose_threshold_needs_both_kinds_of_dev_text(clf: LocalClassifier) -> None:
    with pytest.raises(ConfigError, match="none of the 2 texts is out-of-scope"):
        clf.choose_threshold(["hi", "refund please"], ["greeting", "refund"])
    with pytest.raises(ConfigError, match="labels the model was not trained on"):
        clf.choose_threshold(["hi", "play jazz"], ["greeting", "play_music"])
    assert clf.threshold is None


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"No saved classifier at .*missing\.npz"):
        LocalClassifier.load(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all", b"PK\x03\x04 truncated zip"],
    ids=["empty", "text", "broken-zip"],
)
def test_load_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.npz"
    path.write_bytes(content)

    with pytest.raises(ConfigError, match=r"is not a classifier saved by LocalClassifier\.save"):
        LocalClassifier.load(path)


def test_load_rejects_a_foreign_npz(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros((2, 2)))

    with pytest.raises(ConfigError, match=r"is not a classifier saved by LocalClassifier\.save"):
        LocalClassifier.load(path)


def test_load_rejects_inconsistent_arrays(clf: LocalClassifier, tmp_path: Path) -> None:
    path = tmp_path / "intents.npz"
    clf.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["weights"] = arrays["weights"][:-1]
    np.savez(path, **arrays)

    with pytest.raises(ConfigError, match="is inconsistent: array shapes"):
        LocalClassifier.load(path)


def damaged(arrays: dict[str, np.ndarray], change: str) -> dict[str, np.ndarray]:
    header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    words, chars = header["vocabularies"]
    if change == "nan weight":
        arrays["weights"] = arrays["weights"].copy()
        arrays["weights"][3, 1] = np.nan
    elif change == "inf intercept":
        arrays["intercept"] = arrays["intercept"].copy()
        arrays["intercept"][0] = np.inf
    elif change == "long word n-gram":
        words[0] = "where is my order"
    elif change == "double space":
        words[0] = "where  is"
    elif change == "duplicate n-gram":
        chars[1] = chars[0]
    elif change == "long character n-gram":
        chars[0] = "abcdefgh"
    elif change == "duplicate token":
        header["tokens"][1] = header["tokens"][0]
    elif change == "token with a space":
        header["tokens"][0] = "where is"
    elif change == "huge word range":
        header["word_ngrams"] = [1, 10**9]
    arrays["header"] = np.frombuffer(json.dumps(header).encode("ascii"), dtype=np.uint8)
    return arrays


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("nan weight", "its weights hold 1 non-finite numbers"),
        ("inf intercept", "its intercept hold 1 non-finite numbers"),
        ("long word n-gram", "word n-gram 'where is my order' is not 1 to 2 words"),
        ("double space", "word n-gram 'where  is' is not 1 to 2 words"),
        ("duplicate n-gram", "its character vocabulary lists 1 n-grams twice"),
        ("long character n-gram", "character n-gram 'abcdefgh' is not 1 to 5 characters"),
        ("duplicate token", "its token list names 1 tokens twice"),
        ("token with a space", "its token list holds an empty token or one with whitespace"),
        ("huge word range", "word_ngrams=(1, 1000000000) is not an n-gram range"),
    ],
)
def test_load_rejects_a_damaged_file(
    clf: LocalClassifier, tmp_path: Path, change: str, said: str
) -> None:
    path = tmp_path / "intents.npz"
    clf.save(path)
    with np.load(path) as data:
        arrays = damaged(dict(data), change)
    np.savez(path, **arrays)

    with pytest.raises(ConfigError, match=re.escape(said)):
        LocalClassifier.load(path)


def bitext_splits(shared_data: Path) -> dict[str, list[dict[str, str]]]:
    path = shared_data / "bitext_customer_support" / "bitext_customer_support.jsonl"
    if not path.is_file():
        pytest.skip(f"Bitext data not found at {path}")
    splits: dict[str, list[dict[str, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        splits.setdefault(row["split"], []).append(row)
    return splits


def test_bitext_accuracy_on_the_real_test_split(shared_data: Path) -> None:
    splits = bitext_splits(shared_data)
    train, test = splits["train"], splits["test"]

    clf = LocalClassifier(threshold=None).fit(
        [r["text"] for r in train], [r["intent"] for r in train]
    )
    predicted = [p.label for p in clf.predict_many([r["text"] for r in test])]

    accuracy = np.mean([p == r["intent"] for p, r in zip(predicted, test, strict=True)])
    assert accuracy >= 0.98


def test_default_threshold_refuses_the_weather_on_bitext(shared_data: Path) -> None:
    splits = bitext_splits(shared_data)
    train, test = splits["train"], splits["test"]

    clf = LocalClassifier(out_of_scope="unknown").fit(
        [r["text"] for r in train], [r["intent"] for r in train]
    )

    assert clf.threshold is not None and 0.0 < clf.threshold < 1.0
    off_topic = ["what's the weather", "what is the weather like tomorrow", "tell me a joke"]
    assert [p.label for p in clf.predict_many(off_topic)] == ["unknown"] * 3
    assert clf.predict("what's the weather").label == "unknown"
    predicted = clf.predict_many([r["text"] for r in test])
    kept = np.mean([p.label == r["intent"] for p, r in zip(predicted, test, strict=True)])
    assert kept >= 0.96  # about 2% of in-scope texts fall below the calibrated threshold


# -- the out-of-scope threshold calibrated during fit --------------------------------------


def test_fit_calibrates_a_threshold_by_default() -> None:
    clf = LocalClassifier().fit(*training())

    assert clf.threshold is not None and 0.0 < clf.threshold < 1.0
    assert "threshold=" in repr(clf)


def test_calibration_is_deterministic_with_a_seed() -> None:
    first = LocalClassifier(seed=7).fit(*training())
    again = LocalClassifier(seed=7).fit(*training())

    assert first.threshold == again.threshold
    assert first.predict_many(probes()) == again.predict_many(probes())


def test_calibrated_threshold_rejects_the_asked_share_of_held_out_texts() -> None:
    texts, labels = training()
    strict = LocalClassifier(reject_share=0.5).fit(texts, labels)
    lenient = LocalClassifier(reject_share=0.01).fit(texts, labels)

    assert strict.threshold is not None and lenient.threshold is not None
    assert lenient.threshold < strict.threshold


def test_a_given_threshold_or_none_skips_calibration() -> None:
    assert LocalClassifier(threshold=0.3).fit(*training()).threshold == 0.3
    assert LocalClassifier(threshold=None).fit(*training()).threshold is None
    clf = LocalClassifier(threshold=None)
    clf.threshold = "auto"
    assert clf.fit(*training()).threshold is not None


def test_too_little_data_to_hold_out_leaves_no_threshold() -> None:
    clf = LocalClassifier().fit(["where is my parcel", "refund please"], ["track", "refund"])

    assert clf.threshold is None


def test_bad_calibration_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"holdout=0 is a share"):
        LocalClassifier(holdout=0)
    with pytest.raises(ConfigError, match=r"reject_share=1.5 is a share"):
        LocalClassifier(reject_share=1.5)
    with pytest.raises(ConfigError, match=r"threshold='sometimes' is not a confidence"):
        LocalClassifier(threshold="sometimes")  # type: ignore[arg-type]


# -- batches, odd text, and files --------------------------------------------------------

ODD = [
    "",
    " ",
    "\t\n",
    "\ud800",
    "order \udfff refund",
    "\udc00\ud800 where is my parcel",
    "注文はどこですか",
    "返金 refund お願いします",
    "🙂",
    "refund 👍🏽👍🏽 please",
    "ΟΔΟΣ ΣΑΣ ς",
    "İstanbul ǅ ß ﬃ",
    "a\u00a0b\u2028c\x1cd\u3000e",
    "\x00\x01 hello \x7f",
    "e\u0301 ñ n\u0303",
    "\U0010ffff \ufeff \ufffd",
    "x" * 500,
]


def test_odd_unicode_never_crashes(clf: LocalClassifier) -> None:
    many = clf.predict_many(ODD)

    assert_same_predictions(many, [clf.predict(text) for text in ODD])
    assert all(0.0 <= p.confidence <= 1.0 for p in many)
    np.testing.assert_allclose(clf.predict_proba(ODD).sum(axis=1), 1.0)


def test_fit_on_odd_unicode_then_save_and_load(tmp_path: Path) -> None:
    texts, labels = training()
    texts = [*texts, *ODD[3:]]
    labels = [*labels, *["greeting"] * len(ODD[3:])]
    clf = LocalClassifier().fit(texts, labels)
    path = tmp_path / "odd.npz"

    clf.save(path)
    loaded = LocalClassifier.load(path)

    assert loaded.predict_many(ODD + probes()) == clf.predict_many(ODD + probes())
    assert_same_predictions(loaded.predict_many(ODD), [loaded.predict(t) for t in ODD])


def test_save_and_load_keep_lone_surrogates_apart_from_the_character_they_pair_into(
    tmp_path: Path,
) -> None:
    # "\ud83d\ude00" is two lone surrogates; JSON escapes them as it escapes "😀" itself.
    pair = "\ud83d\ude00"
    texts, labels = training()
    texts = [*texts, f"refund {pair}", f"hello {pair} {pair}", "x😀 smile", f"x{pair} frown"]
    labels = [*labels, "refund", "greeting", "greeting", "refund"]
    clf = LocalClassifier(threshold=None, char_ngrams=(2, 2)).fit(texts, labels)
    path = tmp_path / "pairs.npz"

    clf.save(path)
    loaded = LocalClassifier.load(path)

    asked = [pair, "😀", f"x{pair}", "x😀", f"{pair} 😀", *probes()]
    assert loaded.predict_many(asked) == clf.predict_many(asked)
    assert [loaded.predict(t) for t in asked] == [clf.predict(t) for t in asked]
    assert list(loaded._fitted("test").tokens.index) == list(clf._fitted("test").tokens.index)


def test_save_and_load_name_a_bad_path(clf: LocalClassifier, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"load\(None\): the path must be a str"):
        LocalClassifier.load(None)  # type: ignore[arg-type]
    directory = r"Could not write .*IsADirectoryError.*Give the classifier a file path"
    with pytest.raises(ConfigError, match=directory):
        clf.save(tmp_path)
    with pytest.raises(ConfigError, match=r"Could not write .*missing.*FileNotFoundError"):
        clf.save(tmp_path / "missing" / "model.npz")


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), RuntimeError("killed")])
def test_a_save_that_fails_midway_keeps_the_previous_file_whole(
    clf: LocalClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    path = tmp_path / "intents.npz"
    clf.save(path)
    before = path.read_bytes()
    other = LocalClassifier(threshold=None, c=1.0).fit(*training())

    def half_then_fail(file: Any, **arrays: Any) -> None:
        file.write(b"PK\x03\x04 half a zip")
        raise fault

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(ConfigError if isinstance(fault, OSError) else RuntimeError):
        other.save(path)

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["intents.npz"]
    monkeypatch.undo()
    assert LocalClassifier.load(path).predict_many(probes()) == clf.predict_many(probes())


def test_save_keeps_long_names_symlinks_and_file_modes(
    clf: LocalClassifier, tmp_path: Path
) -> None:
    other = LocalClassifier(threshold=None, c=1.0).fit(*training())
    long_name = tmp_path / ("m" * 240 + ".npz")  # the file system takes 255
    other.save(long_name)
    target = tmp_path / "target.npz"
    clf.save(target)
    target.chmod(0o600)
    link = tmp_path / "link.npz"
    link.symlink_to(target)

    other.save(link)

    assert link.is_symlink()
    assert target.stat().st_mode & 0o777 == 0o600
    for path in (long_name, target):
        assert LocalClassifier.load(path).predict_many(probes()) == other.predict_many(probes())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [long_name.name, "target.npz", "link.npz"]
    )


@pytest.mark.parametrize("setting", ["word_ngrams", "char_ngrams"])
def test_n_gram_ranges_have_a_ceiling(setting: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{setting}=(1, {10**12}) is not an n-gram")):
        LocalClassifier(**{setting: (1, 10**12)})
    assert getattr(LocalClassifier(**{setting: (1, 32)}), setting) == (1, 32)


def test_empty_batches(clf: LocalClassifier) -> None:
    assert clf.predict_many([]) == []
    assert clf.predict_proba([]).shape == (0, len(TRAIN))


def test_loads_a_version_1_file(clf: LocalClassifier, tmp_path: Path) -> None:
    path = tmp_path / "v2.npz"
    clf.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    del header["tokens"]
    header["version"] = 1
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    old = tmp_path / "v1.npz"
    np.savez(old, **arrays)

    loaded = LocalClassifier.load(old)

    assert_same_predictions(loaded.predict_many(probes()), clf.predict_many(probes()))


WORDS = sorted({word for text in training()[0] for word in text.split()})
PIECES = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=8),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(
        ["\ud800", "\udfff", "注文", "🙂", "👍🏽", "Σ", "İ", "\u00a0", "\u2028", " ", "\t"]
    ),
)
TEXTS = st.lists(PIECES, max_size=12).map(" ".join) | st.text(max_size=40)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(TEXTS, min_size=1, max_size=8))
def test_predict_many_equals_predict_on_any_text(clf: LocalClassifier, texts: list[str]) -> None:
    assert_same_predictions(clf.predict_many(texts), [clf.predict(text) for text in texts])


EXACT = LocalClassifier(unseen_penalty=0, threshold=None).fit(*training())
FEATURES = sklearn_features(training()[0])


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(TEXTS, min_size=1, max_size=8))
def test_scores_equal_sklearn_features_on_any_text(texts: list[str]) -> None:
    weights, intercept = exact_weights(EXACT, FEATURES)
    theirs = softmax(FEATURES.transform(texts) @ weights + intercept)

    np.testing.assert_allclose(EXACT.predict_proba(texts), theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("repeats", [17, 2_000, 50_000])
def test_a_token_repeated_thousands_of_times_scores_as_sklearn(
    repeats: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EXACT, "max_chars", None)  # whole texts, as scikit-learn reads them
    texts = ["arrive " * repeats, "where is my order " * repeats + "refund", "refund " * 3]
    weights, intercept = exact_weights(EXACT, FEATURES)
    theirs = softmax(FEATURES.transform(texts) @ weights + intercept)

    np.testing.assert_allclose(EXACT.predict_proba(texts), theirs, rtol=0, atol=1e-12)
    assert_same_predictions(EXACT.predict_many(texts), [EXACT.predict(t) for t in texts])


@pytest.mark.parametrize(
    ("word_ngrams", "char_ngrams"), [((1, 3), (1, 3)), ((2, 3), (3, 5)), ((1, 1), (2, 2))]
)
def test_other_ngram_ranges_equal_sklearn_features(
    word_ngrams: tuple[int, int], char_ngrams: tuple[int, int], tmp_path: Path
) -> None:
    texts = training()[0]
    clf = LocalClassifier(
        word_ngrams=word_ngrams, char_ngrams=char_ngrams, unseen_penalty=0, threshold=None
    ).fit(*training())
    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=word_ngrams, sublinear_tf=True)),
            (
                "char",
                TfidfVectorizer(analyzer="char_wb", ngram_range=char_ngrams, sublinear_tf=True),
            ),
        ]
    ).fit(texts)
    weights, intercept = exact_weights(clf, features)
    probe = probes() + ODD

    theirs = softmax(features.transform(probe) @ weights + intercept)

    np.testing.assert_allclose(clf.predict_proba(probe), theirs, rtol=0, atol=1e-12)
    assert_same_predictions(clf.predict_many(probe), [clf.predict(t) for t in probe])
    clf.save(tmp_path / "ranges.npz")
    loaded = LocalClassifier.load(tmp_path / "ranges.npz")
    assert loaded.predict_many(probe) == clf.predict_many(probe)


def test_a_batch_larger_than_a_chunk_scores_as_one(
    clf: LocalClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = probes()
    whole = clf.predict_many(texts)
    proba = clf.predict_proba(texts)

    monkeypatch.setattr("chainkit.classify._CHUNK", 7)
    calls = []
    chunk = classify._score_chunk
    monkeypatch.setattr(
        "chainkit.classify._score_chunk", lambda *args: calls.append(1) or chunk(*args)
    )

    assert clf.predict_many(texts) == whole
    assert len(calls) == -(-len(texts) // 7)
    np.testing.assert_array_equal(clf.predict_proba(texts), proba)
