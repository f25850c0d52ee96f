"""Adversarial tests of LocalClassifier's saved format version 3, fifth round.

Each test states a promise of chainkit/classify.py that an adversarial test found broken at
beb10d1: a damaged file is refused on load with a ConfigError ("save it again"), and a model
that loads predicts with finite confidences. Found instead:

* pydantic's lax mode turns ``"rejected": true`` into 1, ``false`` into class 0, and
  ``"1"`` into 1: a file naming no class by a whole number loads with another class lowering
  the others' confidence. The constructor refuses booleans for ``max_iter``, ``max_chars`` and
  the n-gram ranges, but a header's ``true`` is converted before the constructor sees it, and
  ``"threshold": true`` becomes 1.0 (every answer out of scope);
* a class list that names one class five times loads;
* an intercept near float64's limit, or an idf whose square overflows, loads and then gives
  NaN confidences (which no threshold rejects) or a RuntimeWarning (an error under pytest);
* complex weights raise ComplexWarning from ``load``, not a ConfigError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chainkit.classify import LocalClassifier
from chainkit.errors import ConfigError
from tests.test_classify import probes
from tests.test_classify_adversarial import with_oos


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("attack5") / "model.npz"
    LocalClassifier(threshold=None).fit(*with_oos()).save(path)
    return path


def variant(saved: Path, new: Path, header: dict[str, Any] | None = None, **arrays: Any) -> Path:
    """A copy of ``saved`` with header fields and arrays replaced, the header's JSON as given."""
    with np.load(saved) as data:
        parts = dict(data)
    fields = json.loads(bytes(parts["header"]).decode("utf-8"))
    fields.update(header or {})
    parts["header"] = np.frombuffer(json.dumps(fields).encode("utf-8"), dtype=np.uint8)
    parts.update(arrays)
    np.savez(new, **parts)
    return new


def test_the_saved_model_names_its_out_of_scope_class(saved: Path) -> None:
    with np.load(saved) as data:
        header = json.loads(bytes(data["header"]).decode("utf-8"))
    assert header["version"] == 3
    assert header["classes"][header["rejected"]] == "oos"


@pytest.mark.parametrize("value", [True, False, "1"], ids=["true", "false", "string"])
def test_a_rejected_class_that_is_not_a_whole_number_is_damage(
    saved: Path, tmp_path: Path, value: object
) -> None:
    path = variant(saved, tmp_path / "m.npz", {"rejected": value})
    # Found: loads, with class 1 ('greeting') or class 0 ('change_password') as the class
    # whose probability lowers every other answer's confidence.
    with pytest.raises(ConfigError, match=r"m\.npz"):
        LocalClassifier.load(path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("threshold", True),
        ("max_chars", True),
        ("max_iter", True),
        ("c", True),
        ("word_ngrams", [True, 2]),
        ("char_ngrams", [True, 5]),
        ("version", True),
    ],
    ids=["threshold", "max_chars", "max_iter", "c", "word_ngrams", "char_ngrams", "version"],
)
def test_a_boolean_where_a_number_belongs_is_damage(
    saved: Path, tmp_path: Path, field: str, value: object
) -> None:
    changes: dict[str, Any] = {field: value}
    if field == "version":
        changes["rejected"] = -1  # a version 1 file names no rejected class
    path = variant(saved, tmp_path / "m.npz", changes)
    # Found: loads. ``"threshold": true`` is 1.0 and every answer becomes 'oos'; ``"max_chars":
    # true`` cuts every text to its first character. The constructor refuses booleans for
    # these; the header's pydantic model converts them first.
    with pytest.raises(ConfigError, match=r"m\.npz"):
        LocalClassifier.load(path)


def test_a_class_named_twice_is_damage(saved: Path, tmp_path: Path) -> None:
    with np.load(saved) as data:
        classes = json.loads(bytes(data["header"]).decode("utf-8"))["classes"]
    path = variant(saved, tmp_path / "m.npz", {"classes": [classes[0]] * len(classes)})
    # Found: loads; every prediction is 'change_password', whatever class scored best.
    with pytest.raises(ConfigError, match=r"m\.npz"):
        LocalClassifier.load(path)


def finite_or_refused(path: Path) -> None:
    """Refused on load with a ConfigError, or every confidence on the probes is finite."""
    try:
        model = LocalClassifier.load(path)
    except ConfigError:
        return
    model.threshold = 0.5
    predictions = model.predict_many(probes())
    bad = [p for p in predictions if not np.isfinite(p.confidence)]
    assert not bad, f"{len(bad)} NaN confidences, e.g. {bad[0]}: no threshold rejects them"


def test_an_intercept_near_the_float64_limit_is_damage(saved: Path, tmp_path: Path) -> None:
    with np.load(saved) as data:
        size = data["intercept"].size
    huge = np.where(np.arange(size) % 2 == 0, 1.7e308, -1.7e308)
    # Found: loads; three probes get confidence NaN.
    finite_or_refused(variant(saved, tmp_path / "m.npz", intercept=huge))


def test_an_idf_whose_square_overflows_is_damage(saved: Path, tmp_path: Path) -> None:
    with np.load(saved) as data:
        shape = data["idf"].shape
    # Found: loads; predict raises "RuntimeWarning: overflow encountered in multiply" (an
    # error under filterwarnings=error), and 263 of the probes get NaN without that filter.
    finite_or_refused(variant(saved, tmp_path / "m.npz", idf=np.full(shape, 1e200)))


def test_complex_weights_are_a_config_error(saved: Path, tmp_path: Path) -> None:
    with np.load(saved) as data:
        weights = data["weights"].astype(np.complex128)
    path = variant(saved, tmp_path / "m.npz", weights=weights)
    # Found: numpy.exceptions.ComplexWarning from load (an error under filterwarnings=error);
    # without the filter it loads, the imaginary parts silently dropped.
    with pytest.raises(ConfigError, match=r"m\.npz"):
        LocalClassifier.load(path)


@pytest.mark.parametrize(
    ("header", "arrays", "said"),
    [
        ({}, {"idf": "zeros"}, "not within 1 to 1000"),
        ({"version": 3, "rejected": None}, {}, "rejected"),
        ({}, {"weights": np.array([["a"]])}, "not real numbers"),
    ],
    ids=["idf below 1", "rejected null", "text weights"],
)
def test_more_damage_is_a_config_error(
    saved: Path, tmp_path: Path, header: dict[str, Any], arrays: dict[str, Any], said: str
) -> None:
    if arrays.get("idf") == "zeros":
        with np.load(saved) as data:
            arrays = {"idf": np.zeros_like(data["idf"])}  # every idf 0: below any fit's 1
    with pytest.raises(ConfigError, match=said):
        LocalClassifier.load(variant(saved, tmp_path / "m.npz", header, **arrays))


def test_a_version_3_header_without_its_rejected_class_is_damage(
    saved: Path, tmp_path: Path
) -> None:
    with np.load(saved) as data:
        parts = dict(data)
    fields = json.loads(bytes(parts["header"]).decode("utf-8"))
    del fields["rejected"]
    parts["header"] = np.frombuffer(json.dumps(fields).encode("utf-8"), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", **parts)
    with pytest.raises(ConfigError, match="names its rejected class"):
        LocalClassifier.load(tmp_path / "m.npz")
