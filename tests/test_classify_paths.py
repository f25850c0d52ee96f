"""LocalClassifier's two scoring paths and the pieces they stand on, against each other.

The numba-compiled loop (the ``fast`` extra) and the numpy path must give the same scores to
1e-12 on any text; the compiled loop must score a text the same, to the last bit, alone, in
any batch and in any thread's slice; the vectorised character analysis must find exactly the
n-grams the Python one finds; the hash tables must answer as a dict does.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import classify
from chainkit.classify import LocalClassifier
from tests.test_classify import ODD, OOS_DEV, TEXTS, probes, training

compiled = pytest.mark.skipif(
    classify._kernel() is None, reason="numba is not installed (the fast extra)"
)
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def clf() -> LocalClassifier:
    return LocalClassifier(threshold=None).fit(*training())


def numpy_scores(clf: LocalClassifier, texts: list[str]) -> classify._Scores:
    model = clf._fitted("test")
    scores, temperature = classify._chunk_scores(model, texts, clf.unseen_penalty)
    return (scores, temperature, *classify._top(scores, temperature, model.rejected))


def compiled_scores(clf: LocalClassifier, texts: list[str]) -> classify._Scores:
    return classify._kernel_scores(
        classify._kernel(), clf._fitted("test"), texts, clf.unseen_penalty
    )


def assert_close(ours: classify._Scores, theirs: classify._Scores) -> None:
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours[2], theirs[2])
    np.testing.assert_allclose(ours[3], theirs[3], rtol=0, atol=1e-12)


@compiled
@SETTINGS
@given(texts=st.lists(TEXTS, min_size=1, max_size=12))
def test_compiled_loop_equals_numpy_on_any_text(clf: LocalClassifier, texts: list[str]) -> None:
    assert_close(compiled_scores(clf, texts), numpy_scores(clf, texts))


@pytest.fixture(scope="module")
def with_oos() -> LocalClassifier:
    texts, labels = training()
    return LocalClassifier(threshold=None).fit([*texts, *OOS_DEV], [*labels, *["oos"] * 6])


@compiled
@SETTINGS
@given(texts=st.lists(TEXTS, min_size=1, max_size=12))
def test_with_an_out_of_scope_class_compiled_equals_numpy_and_predict_equals_predict_many(
    with_oos: LocalClassifier, texts: list[str]
) -> None:
    assert with_oos._fitted("test").rejected == with_oos.classes.index("oos")
    assert_close(compiled_scores(with_oos, texts), numpy_scores(with_oos, texts))
    assert with_oos.predict_many(texts) == [with_oos.predict(text) for text in texts]


@compiled
def test_compiled_loop_equals_numpy_with_many_new_tokens_and_threads(
    clf: LocalClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Enough new tokens for the vectorised analysis, and slices on threads from 2 texts up.
    texts = [f"{t} zq{i}x {i}ü 注文{i}" for i, t in enumerate(probes() + ODD)]
    monkeypatch.setattr(classify, "_PARALLEL", 2)
    monkeypatch.setattr(classify, "_threads", lambda: 3)

    threaded = compiled_scores(clf, texts)

    assert_close(threaded, numpy_scores(clf, texts))
    monkeypatch.setattr(classify, "_threads", lambda: 1)
    single = compiled_scores(clf, texts)
    for ours, theirs in zip(threaded, single, strict=True):
        np.testing.assert_array_equal(ours, theirs)  # bit for bit, whatever the slicing


@compiled
@SETTINGS
@given(texts=st.lists(TEXTS, min_size=2, max_size=10), data=st.data())
def test_compiled_loop_scores_a_text_alike_in_any_batch(
    clf: LocalClassifier, texts: list[str], data: st.DataObject
) -> None:
    batch = compiled_scores(clf, texts)
    index = data.draw(st.integers(0, len(texts) - 1))
    alone = compiled_scores(clf, [texts[index]])

    np.testing.assert_array_equal(batch[0][index], alone[0][0])
    assert batch[3][index] == alone[3][0]
    assert clf.predict(texts[index]) == clf.predict_many(texts)[index]


def test_the_switch_turns_the_compiled_loop_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify, "_kernel_state", {})  # forget the module looked up before
    monkeypatch.setenv("CHAINKIT_CLASSIFIER_KERNEL", "0")

    assert classify._kernel() is None
    clf = LocalClassifier(threshold=None).fit(*training())
    assert clf.predict_many(["where is my order"])[0].label == "track_order"


TOKEN = st.text(
    alphabet=st.sampled_from(list("abcdeé日本🚚\ud800ΣİXY1_' ")), min_size=1, max_size=9
).map(lambda t: t.replace(" ", "") or "a")


@pytest.mark.parametrize("path", ["numpy", pytest.param("compiled", marks=compiled)])
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    train=st.lists(TOKEN, min_size=1, max_size=60),
    test=st.lists(TOKEN, min_size=1, max_size=60),
    ranges=st.sampled_from([(2, 5), (1, 3), (4, 6), (3, 3), (1, 1)]),
)
def test_vectorised_character_analysis_equals_python(
    path: str,
    monkeypatch: pytest.MonkeyPatch,
    train: list[str],
    test: list[str],
    ranges: tuple[int, int],
) -> None:
    if path == "numpy":
        monkeypatch.setitem(classify._kernel_state, "module", None)
    chars: dict[str, int] = {}
    classify._analyse(train, {}, chars, ranges, grow=True)
    table = classify._char_keys(chars, ranges[1])
    assert table is not None
    test = list(dict.fromkeys(test))
    python = classify._analyse(test, {}, dict(chars), ranges, grow=False)
    numpy = classify._analyse(test, {}, dict(chars), ranges, grow=False, keys=table)

    np.testing.assert_array_equal(python.char_ptr, numpy.char_ptr)
    # The same n-grams per token: known ones by column, unseen ones by the same partition.
    pairs = set()
    for token in range(len(test)):
        ours = numpy.char_ids[numpy.char_ptr[token] : numpy.char_ptr[token + 1]]
        theirs = python.char_ids[python.char_ptr[token] : python.char_ptr[token + 1]]
        assert sorted(ours[ours < len(chars)]) == sorted(theirs[theirs < len(chars)])
        unseen_ours = sorted(ours[ours >= len(chars)])
        unseen_theirs = sorted(theirs[theirs >= len(chars)])
        assert len(unseen_ours) == len(unseen_theirs)
    # Equal unseen n-grams share an id on both sides (checked through the gram texts).
    low, high = ranges
    for token, word in enumerate(test):
        padded = f" {word.lower()} "
        grams = [
            padded[i : i + n]
            for n in range(low, high + 1)
            if len(padded) >= n
            for i in range(len(padded) - n + 1)
        ] or [padded]
        ids = numpy.char_ids[numpy.char_ptr[token] : numpy.char_ptr[token + 1]]
        pairs |= set(zip(grams, ids.tolist(), strict=True))
    by_gram: dict[str, set[int]] = {}
    for gram, gram_id in pairs:
        by_gram.setdefault(gram, set()).add(gram_id)
    assert all(len(ids) == 1 for ids in by_gram.values())
    assert len({next(iter(ids)) for ids in by_gram.values()}) == len(by_gram)


def test_a_vocabulary_too_wide_for_63_bit_keys_falls_back_to_python() -> None:
    chars = {chr(0x4E00 + i) * 5: i for i in range(5000)}  # 5,000 CJK characters in 5-grams

    assert classify._char_keys(chars, 5) is None


def test_windows_longer_than_any_known_n_gram_never_wrap_into_a_column() -> None:
    # 7 letters need 3 bits a digit: 22-character windows would need 66 bits, although every
    # n-gram of these short words fits. "f" * 22 would wrap to -1, the empty slot's key.
    texts = ["abc def", "fed cba", "bad cafe", "face bead", "dab fad", "ace bed"]
    clf = LocalClassifier(threshold=None, char_ngrams=(2, 22), unseen_penalty=0)
    clf.fit(texts, list("xyxyxy"))
    filler = [f"q{i}" for i in range(70)]  # enough new tokens for the vectorised analysis

    assert classify._char_keys(clf._fitted("test").chars, 22) is None
    alone = clf.predict("f" * 22)
    assert clf.predict_many(["f" * 22, *filler])[0].confidence == pytest.approx(
        alone.confidence, abs=1e-12
    )


def test_a_negative_key_is_never_found() -> None:
    table = classify._lookup(np.array([0, 5], dtype=np.int64), np.array([7, 8], dtype=np.int64))

    assert table.get(np.array([-1, 0, 5, -(2**63)], dtype=np.int64)).tolist() == [-1, 7, 8, -1]


@settings(max_examples=200, deadline=None)
@given(
    keys=st.sets(st.integers(0, 2**63 - 1), max_size=300),
    probes=st.lists(st.integers(0, 2**63 - 1), max_size=100),
)
def test_hash_table_answers_as_a_dict(keys: set[int], probes: list[int]) -> None:
    ordered = sorted(keys)
    table = classify._lookup(
        np.array(ordered, dtype=np.int64), np.arange(len(ordered), dtype=np.int64)
    )
    asked = ordered + probes
    expected = [ordered.index(k) if k in keys else -1 for k in asked]

    assert table.get(np.array(asked, dtype=np.int64)).tolist() == expected


@compiled
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_scores_a_large_batch(
    clf: LocalClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    monkeypatch.setattr(classify, "_PARALLEL", 2)
    monkeypatch.setattr(classify, "_threads", lambda: 2)
    texts = probes()
    expected = clf.predict_many(texts)  # the parent's pool now exists
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        signal.alarm(30)  # a child stuck on its parent's dead pool dies instead of hanging
        ok = clf.predict_many(texts) == expected
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)

    assert os.read(read, 1) == b"1"
    assert status == 0


# Every character str.split() splits at, and characters next to them in the tables.
SPACES = [chr(code) for code in np.flatnonzero(classify._SPACES).tolist()]
SPLIT_TEXTS = st.text(
    alphabet=st.sampled_from([*SPACES, *"ab日本🚚\ud800\udfffΣİ", "\u3001", "\u200b", "\x1b"]),
    max_size=30,
)


def test_the_whitespace_table_is_str_isspace() -> None:
    import sys

    spaces = [code for code in range(sys.maxunicode + 1) if chr(code).isspace()]

    assert spaces[-1] < classify._SPACES.size
    assert np.flatnonzero(classify._SPACES).tolist() == spaces


@compiled
@SETTINGS
@given(texts=st.lists(SPLIT_TEXTS | TEXTS, min_size=1, max_size=10))
def test_compiled_tokens_are_str_split_and_the_model_table(
    clf: LocalClassifier, texts: list[str]
) -> None:
    model = clf._fitted("test")
    token_ptr, ids, fresh = classify._kernel_tokens(classify._kernel(), model, texts)

    split = [text.split() for text in texts]
    assert np.diff(token_ptr).tolist() == [len(tokens) for tokens in split]
    flat = [token for tokens in split for token in tokens]
    seeded = len(model.tokens.index)
    new = {token: row for token, row in fresh.index.items()}
    rows = [model.tokens.index.get(token, seeded + new.get(token, -1 - seeded)) for token in flat]
    assert ids.tolist() == rows
    assert min(rows, default=0) >= 0


@compiled
def test_every_token_of_the_model_is_found_in_its_table(clf: LocalClassifier) -> None:
    model = clf._fitted("test")
    tokens = list(model.tokens.index)
    _, ids, fresh = classify._kernel_tokens(classify._kernel(), model, [" ".join(tokens)])

    assert ids.tolist() == [model.tokens.index[token] for token in tokens]
    assert not fresh.index


@compiled
def test_a_text_with_repeated_new_words_scores_alike_in_any_batch(clf: LocalClassifier) -> None:
    # Its unseen word n-grams get ids by the batch's numbering of new words; their tf-idf
    # must not be summed in id order.
    text = "u0 u1 u2 u0 u0 u3 u0 u1 u2 order"
    alone = clf.predict(text)

    for others in (["u3 u2 u1 u0"], ["u2", "u1 u3"], ["zz yy u0"] * 3):
        assert clf.predict_many([*others, text])[-1] == alone
        assert clf.predict_many([text, *others])[0] == alone


NEW = [f"zq{i}" for i in range(12)]


@compiled
@SETTINGS
@given(
    counts=st.dictionaries(st.sampled_from(NEW), st.integers(1, 6), min_size=3, max_size=8),
    known=st.lists(st.sampled_from(["where", "is", "my", "order", "refund"]), max_size=3),
    data=st.data(),
)
def test_repeated_new_words_score_alike_in_any_batch(
    clf: LocalClassifier, counts: dict[str, int], known: list[str], data: st.DataObject
) -> None:
    words = data.draw(st.permutations([w for w, count in counts.items() for _ in range(count)]))
    text = " ".join(words + known)
    alone = compiled_scores(clf, [text])
    # A first text that meets the new words in the opposite order numbers them the other way.
    batch = compiled_scores(clf, [" ".join(reversed(NEW)), text])

    assert batch[1][1] == alone[1][0]  # the temperature, from the unseen n-grams
    assert batch[3][1] == alone[3][0]


@compiled
def test_string_hashes_spread_code_points_equal_in_their_low_bits() -> None:
    # FNV-1a's low bits depend only on the code points' low bits: these 16 characters (all
    # equal mod 2**16) would put every n-gram of one width in one slot of a small table.
    kernel = classify._kernel()
    alphabet = [chr(0x62 + k * 0x10000) for k in range(1, 17)]
    grams = list(dict.fromkeys(a + b + c for a in alphabet for b in alphabet for c in alphabet))
    codes = classify._codes("".join(grams))
    slots = {
        int(kernel._hash(codes, 3 * i, 3 * i + 3, classify._HASH_SEED)) & 4095
        for i in range(len(grams))
    }

    assert len(slots) > 0.5 * 4096  # 4,096 n-grams, 4,096 slots: about 63% of slots taken


@compiled
def test_many_new_tokens_built_to_collide_are_analysed_as_python_does(
    clf: LocalClassifier,
) -> None:
    alphabet = [chr(0x62 + k * 0x10000) for k in range(1, 17)]
    tokens = [
        a + b + c + d for a in alphabet[:8] for b in alphabet for c in alphabet[:4] for d in "xy"
    ]
    texts = [" ".join(tokens[i : i + 40]) for i in range(0, len(tokens), 40)]

    assert_close(compiled_scores(clf, texts), numpy_scores(clf, texts))


def test_a_large_batch_scored_from_a_pool_thread_does_not_wait_on_itself(
    clf: LocalClassifier,
) -> None:
    texts = [f"where is my order {i}" for i in range(classify._PARALLEL + 10)]
    pool = classify._pool(max(1, classify._threads() - 1))

    nested = pool.submit(clf.predict_many, texts).result(timeout=60)

    assert nested == clf.predict_many(texts)


AT_EXIT = """
import atexit
from chainkit import classify
from chainkit.classify import LocalClassifier
from tests.test_classify import probes, training

classify._threads = lambda: 2  # a pool for the fit and for batches, whatever the machine
classify._PARALLEL = 2
texts = probes() * 40
before = LocalClassifier(threshold=None).fit(*training())
expected = before.predict_many(texts)


def drain() -> None:
    # A service classifying what is left of its queue as it exits; every pool refuses work now.
    again = LocalClassifier(threshold=None).fit(*training())
    same = again.predict_many(texts) == expected == before.predict_many(texts)
    print("same" if same else "different", flush=True)


atexit.register(drain)
"""


def test_fit_and_large_batches_work_in_an_atexit_handler() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", AT_EXIT], cwd=root, capture_output=True, text=True, timeout=300
    )

    assert (done.stdout, done.returncode) == ("same\n", 0), done.stderr[-2000:]
