"""Adversarial tests of LocalClassifier's out-of-scope confidence and its saved format.

Each test states a promise of chainkit/classify.py that an adversarial test found broken at 103a935:

* a file of version 1 or 2 keeps the plain top-probability confidence it was saved with, but
  ``save`` always writes version 3, so loading a version 2 model and saving it again turns on
  the P(in scope) ** 20 factor under a threshold that was set on the plain probability;
* save and load round trip to identical predictions, but a model whose ``out_of_scope`` was
  changed after ``fit`` keeps the old out-of-scope class in memory and reads the new label
  from the file;
* a damaged file is refused on load, but weights that are finite as float64 and overflow
  float32 load, and then every text with that n-gram gets confidence NaN, which no threshold
  rejects.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from chainkit.classify import LocalClassifier
from chainkit.errors import ConfigError
from tests.test_classify import OOS_DEV, probes, training


def with_oos() -> tuple[list[str], list[str]]:
    texts, labels = training()
    return [*texts, *OOS_DEV], [*labels, *["oos"] * len(OOS_DEV)]


def rewrite_header(path: Path, new: Path, **changes: object) -> None:
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(bytes(arrays["header"]).decode("utf-8"))
    header.update(changes)
    if header["version"] < 3:
        header.pop("rejected", None)  # as a file saved before version 3
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    np.savez(new, **arrays)


@pytest.fixture(scope="module")
def oos_model() -> LocalClassifier:
    return LocalClassifier(threshold=None).fit(*with_oos())


def test_a_version_2_model_saved_again_keeps_its_plain_confidence(
    oos_model: LocalClassifier, tmp_path: Path
) -> None:
    oos_model.save(tmp_path / "v3.npz")
    rewrite_header(tmp_path / "v3.npz", tmp_path / "v2.npz", version=2, threshold=0.9)
    old = LocalClassifier.load(tmp_path / "v2.npz")
    before = old.predict_many(probes())

    old.save(tmp_path / "again.npz")  # e.g. a deployment that copies its model file
    after = LocalClassifier.load(tmp_path / "again.npz").predict_many(probes())

    # The threshold 0.9 was set on the plain top probability: the same model must keep
    # scoring that way, or it silently rejects texts it accepted before.
    assert [p.label for p in after] == [p.label for p in before]
    np.testing.assert_allclose(
        [p.confidence for p in after], [p.confidence for p in before], rtol=1e-12
    )


@pytest.mark.parametrize("renamed", ["unknown", "greeting"])
def test_out_of_scope_changed_after_fit_survives_save_and_load(
    tmp_path: Path, renamed: str
) -> None:
    clf = LocalClassifier(threshold=None).fit(*with_oos())
    clf.out_of_scope = renamed
    expected = clf.predict_many(probes())

    clf.save(tmp_path / "model.npz")
    got = LocalClassifier.load(tmp_path / "model.npz").predict_many(probes())

    assert [p.label for p in got] == [p.label for p in expected]
    np.testing.assert_allclose(
        [p.confidence for p in got], [p.confidence for p in expected], rtol=1e-12
    )


def test_weights_that_overflow_float32_are_refused_not_scored_as_nan(tmp_path: Path) -> None:
    clf = LocalClassifier(threshold=0.5).fit(*training())
    clf.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as data:
        arrays = dict(data)
    weights = arrays["weights"].astype(np.float64)
    weights[0, 0] = 1e39  # finite as float64; the model keeps float32 weights
    arrays["weights"] = weights
    np.savez(tmp_path / "big.npz", **arrays)

    try:
        with warnings.catch_warnings():  # as in production, where a RuntimeWarning is printed
            warnings.simplefilter("ignore", RuntimeWarning)
            loaded = LocalClassifier.load(tmp_path / "big.npz")
    except ConfigError:
        return  # refused as damaged: the promise holds
    word = loaded._model.terms[0][0]  # type: ignore[union-attr]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = loaded.predict(word)
    # NaN < threshold is False: a NaN confidence is accepted, never answered out of scope.
    assert not np.isnan(got.confidence), got
