"""Speed of chainkit's LocalClassifier against scikit-learn and against its previous version.

The committed results were produced on the machine they name, from the repository root, by::

    .venv/bin/python benchmarks/bench_classifier.py --before adbd399 \
        --output benchmarks/results/classifier_speed.md

(``adbd399``: the last commit before the compiled scoring loop and the new solver.)

Sides, all in one process, interleaved (the order rotates from round to round and from
message to message, so load on the shared machine falls on every side alike):

- ``ours``: ``LocalClassifier`` as checked out (with numba installed: the compiled loop; also
  timed on one thread, and on the numpy path that serves without numba); fitted as
  ``LocalClassifier(threshold=None)``
  (the model alone) and with the defaults (which also calibrates the out-of-scope threshold:
  a fit on 90% of the texts, then a warm-started fit on all of them);
- ``svc``: the reference of issue 13, scikit-learn's ``make_pipeline(TfidfVectorizer(),
  LinearSVC())`` (word unigrams, a linear SVM) fitted and predicting on the same texts;
- ``sklearn``: the same model as ``ours`` through scikit-learn's ``Pipeline.predict`` (its two
  vectorisers fitted on the same texts, ``ours``' weights in a ``LogisticRegression``);
- ``before`` (with ``--before REV``): ``LocalClassifier`` as of git revision REV, imported
  from ``git show REV:chainkit/classify.py``.

Two data sets: Bitext (27 intents) and CLINC150 (150 intents + ``oos``), each trained on its
train split and timed on its test split. Fit: ``--fit-rounds`` rounds. Batch: one
``predict_many`` (or ``Pipeline.predict``) over the whole test split per side and round,
``--rounds`` rounds; the table gives the median. Single message: every test message
``--passes`` times, one call per side, with ``time.perf_counter_ns``. The garbage collector is
off while timing. Also written as JSON beside the Markdown. About 15 minutes on 2 cores with
``--before`` (whose CLINC150 fit takes 1-2 minutes a round). When the data are absent the
script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from report_header import header
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.svm import LinearSVC

from chainkit import classify
from chainkit.classify import LocalClassifier

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BITEXT = DATA / "bitext_customer_support" / "bitext_customer_support.jsonl"
CLINC = DATA / "clinc150" / "clinc150_full.jsonl"
WARM_UP = 200


def read(path: Path, split: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with path.open(encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            if row["split"] == split:
                texts.append(row["text"])
                labels.append(row["intent"])
    return texts, labels


def previous_version(revision: str, directory: Path) -> Any:
    """The LocalClassifier class of ``chainkit/classify.py`` at a git revision."""
    source = subprocess.run(
        ["git", "show", f"{revision}:chainkit/classify.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = directory / "classify_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("classify_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.LocalClassifier


def same_model_in_sklearn(clf: LocalClassifier, texts: Sequence[str]) -> Pipeline:
    """scikit-learn's Pipeline computing ``clf``'s scores: its vectorisers, ``clf``'s weights."""
    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=clf.word_ngrams, sublinear_tf=True)),
            (
                "char",
                TfidfVectorizer(analyzer="char_wb", ngram_range=clf.char_ngrams, sublinear_tf=True),
            ),
        ]
    ).fit(texts)
    model = clf._model  # the benchmark reads the fitted weights; no public API hands them out
    assert model is not None
    regression = LogisticRegression()
    # Fortran order, as LogisticRegression.fit leaves it: C order makes predict copy it per call.
    regression.coef_ = np.asfortranarray(model.weights.T)
    regression.intercept_ = model.intercept.copy()
    regression.classes_ = np.array(model.classes)
    return Pipeline([("features", features), ("model", regression)])


def one_thread(call: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``call`` with the compiled loop on one thread (as on a one-core machine)."""

    def wrapped(argument: Any) -> Any:
        workers = classify._threads
        classify._threads = lambda: 1  # type: ignore[assignment]
        try:
            return call(argument)
        finally:
            classify._threads = workers  # type: ignore[assignment]

    return wrapped


def numpy_path(call: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``call`` on the numpy path, as without numba (the ``fast`` extra)."""

    def wrapped(argument: Any) -> Any:
        module = classify._kernel_state.get("module")
        classify._kernel_state["module"] = None
        try:
            return call(argument)
        finally:
            classify._kernel_state["module"] = module

    return wrapped


def timed(call: Callable[..., Any], *args: Any) -> int:
    started = time.perf_counter_ns()
    call(*args)
    return time.perf_counter_ns() - started


def rotate(sides: list[Any], number: int) -> list[Any]:
    shift = number % len(sides)
    return sides[shift:] + sides[:shift]


def measure_fit(
    texts: list[str], labels: list[str], rounds: int, before: Any
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Fit times of every side, and each side's model from the last round."""
    fits: dict[str, Callable[[], Any]] = {
        "ours (threshold=None)": lambda: LocalClassifier(threshold=None).fit(texts, labels),
        "ours (defaults: calibrates)": lambda: LocalClassifier().fit(texts, labels),
        "svc": lambda: make_pipeline(TfidfVectorizer(), LinearSVC()).fit(texts, labels),
    }
    if before is not None:
        fits["before"] = lambda: before().fit(texts, labels)
    seconds: dict[str, list[float]] = {name: [] for name in fits}
    models: dict[str, Any] = {}
    for number in range(rounds):
        for name in rotate(list(fits), number):
            models.pop(name, None)
            gc.collect()
            started = time.perf_counter_ns()
            models[name] = fits[name]()
            seconds[name].append((time.perf_counter_ns() - started) / 1e9)
            print(f"    fit {name}: {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return seconds, models


def measure_predict(
    sides: dict[str, tuple[Callable[[list[str]], Any], Callable[[str], Any]]],
    texts: list[str],
    rounds: int,
    passes: int,
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    for many, one in sides.values():
        many(texts[:WARM_UP])
        for text in texts[:WARM_UP]:
            one(text)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    latencies: dict[str, list[int]] = {name: [] for name in sides}
    names = list(sides)
    gc.collect()
    gc.disable()
    try:
        for number in range(rounds):
            for name in rotate(names, number):
                rates[name].append(len(texts) / (timed(sides[name][0], texts) / 1e9))
            gc.collect()
        for number, text in enumerate(list(texts) * passes):
            for name in rotate(names, number):
                latencies[name].append(timed(sides[name][1], text))
    finally:
        gc.enable()
    return rates, latencies


def run(name: str, path: Path, args: argparse.Namespace, before: Any) -> dict[str, Any]:
    print(f"{name} ...", file=sys.stderr, flush=True)
    train_texts, train_labels = read(path, "train")
    texts, _ = read(path, "test")
    fit_seconds, models = measure_fit(train_texts, train_labels, args.fit_rounds, before)
    ours, svc = models["ours (threshold=None)"], models["svc"]
    sklearn = same_model_in_sklearn(ours, train_texts)
    pairs = zip(ours.predict_many(texts), sklearn.predict(texts), strict=True)
    same = int(sum(p.label == label for p, label in pairs))
    sides: dict[str, tuple[Callable[[list[str]], Any], Callable[[str], Any]]] = {
        "ours": (ours.predict_many, ours.predict),
        "ours, 1 thread": (one_thread(ours.predict_many), one_thread(ours.predict)),
        "ours, numpy path": (numpy_path(ours.predict_many), numpy_path(ours.predict)),
        "svc": (svc.predict, lambda text: svc.predict([text])),
        "sklearn": (sklearn.predict, lambda text: sklearn.predict([text])),
    }
    if before is not None:
        old = models["before"]
        sides["before"] = (old.predict_many, old.predict)
    rates, latencies = measure_predict(sides, texts, args.rounds, args.passes)
    return {
        "train_texts": len(train_texts),
        "test_texts": len(texts),
        "same_labels_as_sklearn": same,
        "fit_seconds": fit_seconds,
        "throughput_msgs_per_s": rates,
        "single_us": {
            side: {
                "median": float(np.median(values)) / 1000,
                "p99": float(np.percentile(values, 99)) / 1000,
            }
            for side, values in latencies.items()
        },
    }


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| data | measure | ours | svc (TF-IDF+LinearSVC) | same model in sklearn | before | "
        "ours vs svc | ours vs before |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:,.{2 if unit == 's' else 0}f} {unit}"

    for name, result in results.items():
        fits = {side: float(np.median(v)) for side, v in result["fit_seconds"].items()}
        for label, side in (
            ("fit, median (threshold=None)", "ours (threshold=None)"),
            ("fit, median (defaults: calibrates)", "ours (defaults: calibrates)"),
        ):
            ours, svc, before = fits[side], fits["svc"], fits.get("before")
            lines.append(
                f"| {name} | {label} | {cell(ours, 's')} | {cell(svc, 's')} | - | "
                f"{cell(before, 's')} | {ours / svc:.1f}x svc's time | "
                f"{'-' if before is None else f'{before / ours:.1f}x faster'} |"
            )
        rates = {side: float(np.median(v)) for side, v in result["throughput_msgs_per_s"].items()}
        before_rate = rates.get("before")
        for side, how in (
            ("ours", ""),
            ("ours, 1 thread", ", compiled loop on 1 thread"),
            ("ours, numpy path", ", numpy path (no numba)"),
        ):
            speedup = "-" if before_rate is None else f"{rates[side] / before_rate:.1f}x"
            lines.append(
                f"| {name} | batch of {result['test_texts']:,}{how}, msg/s, median | "
                f"{cell(rates[side], '')} | {cell(rates['svc'], '')} | "
                f"{cell(rates['sklearn'], '')} | {cell(before_rate, '')} | "
                f"{rates[side] / rates['svc']:.2f}x svc's rate | "
                f"{speedup} |"
            )
        single = result["single_us"]
        for side, how in (("ours", ""), ("ours, numpy path", ", numpy path")):
            for stat in ("median", "p99"):
                before_us = single.get("before", {}).get(stat)
                ours_us = single[side][stat]
                lines.append(
                    f"| {name} | single message{how}, {stat} µs | {ours_us:,.1f} | "
                    f"{single['svc'][stat]:,.1f} | {single['sklearn'][stat]:,.1f} | "
                    f"{'-' if before_us is None else f'{before_us:,.1f}'} | "
                    f"{single['svc'][stat] / ours_us:.1f}x faster | "
                    f"{'-' if before_us is None else f'{before_us / ours_us:.2f}x faster'} |"
                )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--before", help="git revision of the LocalClassifier to compare with")
    parser.add_argument("--fit-rounds", type=int, default=3, help="fit rounds per side")
    parser.add_argument("--rounds", type=int, default=7, help="batch rounds per side")
    parser.add_argument("--passes", type=int, default=3, help="single-message passes")
    args = parser.parse_args(argv)
    for path in (BITEXT, CLINC):
        if not path.is_file():
            print(f"data not found: {path} (expected ../shared/data, see its READMEs)")
            return 2
    out = header("LocalClassifier speed against scikit-learn", "bench_classifier.py")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "chainkit"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out += [f"Commit `{commit}`{' (chainkit/ modified)' if dirty else ''}.", ""]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as directory:
        before = previous_version(args.before, Path(directory)) if args.before else None
        results = {
            "Bitext": run("Bitext", BITEXT, args, before),
            "CLINC150": run("CLINC150", CLINC, args, before),
        }
    load_end = os.getloadavg()
    out += table(results)
    out += [
        "",
        f"Load average (1, 5, 15 min) at start {load_start[0]:.2f} / {load_start[1]:.2f} / "
        f"{load_start[2]:.2f}, at end {load_end[0]:.2f} / {load_end[1]:.2f} / "
        f"{load_end[2]:.2f}.",
        "",
    ]
    for name, result in results.items():
        out.append(
            f"- {name}: {result['train_texts']:,} train texts, {result['test_texts']:,} test "
            f"messages; ours and the same model in scikit-learn give the same label on "
            f"{result['same_labels_as_sklearn']:,} of them."
        )
    out += [
        "",
        "Ratios: `ours vs svc` is ours' fit time over svc's (the goal: at most 5x) and ours'",
        "batch rate over svc's (the goal: at least 1x); `ours vs before` is the speed-up over",
        "the previous LocalClassifier. `ours` is the default: with numba (the `fast` extra) a",
        "compiled loop, a large batch in slices on every core the process may use (here 2);",
        "`1 thread` is that loop on one core; `numpy path` is what runs without numba.",
        "svc predicts on one core. svc is a weaker model (word unigrams, no confidence);",
        "ours computes word 1-2-grams and character 2-5-grams (about 120 features a message)",
        "and a calibrated confidence. `same model in sklearn` computes ours' exact scores with",
        "scikit-learn's own `Pipeline.predict`. Every figure is a median over rounds taken in",
        "rotating order in one process; the per-round figures are in the JSON file beside this.",
        "",
    ]
    text = "\n".join(out)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        raw = {"commit": commit, "load_start": load_start, "load_end": load_end, **results}
        args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
