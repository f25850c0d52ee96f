"""Out-of-scope scoring study for LocalClassifier on CLINC150, selected on dev only.

Every candidate is computed from the same fitted model's raw class scores and coverage (no
change to fit cost, and predict cost changes by at most a logsumexp), so one fit per setting
serves them all. Stages, run from the repository root::

    /work/main/.venv/bin/python benchmarks/study_oos.py dev    # fits on train, scores dev
    /work/main/.venv/bin/python benchmarks/study_oos.py cv     # 5-fold CV on train+dev
    /work/main/.venv/bin/python benchmarks/study_oos.py test --candidates NAME [NAME]

``dev`` and ``cv`` never read test. ``test`` is meant to be run once, after the candidates
were written down (benchmarks/results/oos_study.md) with their dev and CV figures; it scores
the current default and those candidates and nothing else.

Candidate names are ``variant/c/score/penalty[/param]``, e.g. ``in/30/msp/1`` (the default:
150 intents only, c=30, max softmax probability, unseen_penalty 1). Scores:

- ``msp``: max softmax probability of the coverage-scaled scores (today), param T (a global
  softmax temperature, as ODIN's temperature scaling, Liang et al. ICLR 2018).
- ``maxlogit``: the largest scaled score (Hendrycks et al., ICML 2022, "Scaling
  out-of-distribution detection for real-world settings").
- ``energy``: T * logsumexp(scaled scores / T) (Liu et al., NeurIPS 2020, "Energy-based
  out-of-distribution detection").
- ``margin``: top-1 minus top-2 softmax probability.
- ``negent``: minus the softmax entropy (Hendrycks & Gimpel, ICLR 2017 baseline family).
- with an ``oos`` class (variant ``oos``): ``poos`` rejects on P(oos) alone; ``mix`` with
  param a scores (1 - P(oos))**a * max_{k != oos} P(k) / (1 - P(oos)): a=1 is the top
  in-scope probability, a=0 the in-scope-conditional confidence with the oos class ignored.
  For these the label is the best in-scope class; for every other score a text whose top
  class is ``oos`` is rejected whatever the threshold (as benchmarks/eval_classifier.py does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from chainkit.classify import LocalClassifier, _batch_scores

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLINC = DATA / "clinc150" / "clinc150_full.jsonl"
CACHE = Path("/tmp/acc2")
OOS = "oos"
RECALL_LEVELS = (0.70, 0.75, 0.80, 0.85, 0.90)
LEVEL = 0.822
C_GRID = (10.0, 30.0, 100.0)
PENALTIES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
TEMPERATURES = (0.5, 1.0, 2.0, 4.0)
MIX = (0.0, 0.5, 1.0, 2.0, 4.0)
DEFAULT = "in/30/msp/1/1"
FOLDS = 5

Float = NDArray[np.float64]


def read() -> dict[str, tuple[list[str], list[str]]]:
    splits: dict[str, tuple[list[str], list[str]]] = {}
    with CLINC.open(encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            texts, labels = splits.setdefault(row["split"], ([], []))
            texts.append(row["text"])
            labels.append(row["intent"])
    return splits


def fit(variant: str, c: float, texts: list[str], labels: list[str]) -> LocalClassifier:
    if variant == "in":
        keep = [i for i, y in enumerate(labels) if y != OOS]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return LocalClassifier(c=c, threshold=None).fit(texts, labels)


@dataclass(frozen=True)
class Raw:
    """Unscaled class scores, coverage, and the classes of one model on one split."""

    scores: Float  # (texts, classes)
    coverage: Float
    classes: tuple[str, ...]

    @classmethod
    def of(cls, clf: LocalClassifier, texts: list[str]) -> Raw:
        """Score ``texts`` with ``clf``; checks our MSP against the library's confidence."""
        model = clf._fitted("study")
        # With unseen_penalty 1 the temperature factor is the coverage itself.
        scores, coverage, _, confidence = _batch_scores(model, texts, 1.0, keep_scores=True)
        raw = cls(scores, coverage, tuple(model.classes))
        # Sanity: our MSP at penalty 1 is the library's confidence.
        _, check, _ = raw.decide("msp", 1.0, 1.0)
        assert np.max(np.abs(check - confidence)) < 1e-12
        return raw

    def decide(
        self, score: str, penalty: float, param: float
    ) -> tuple[NDArray[np.int64], Float, NDArray[np.bool_]]:
        """(label index, score where higher means in scope, forced rejection) per text."""
        s = self.scores
        oos = self.classes.index(OOS) if OOS in self.classes else None
        factor = self.coverage**penalty if penalty else np.ones(len(s))
        z = s * factor[:, None]
        top = s.argmax(axis=1)
        forced = top == oos if oos is not None else np.zeros(len(s), dtype=bool)
        if score in ("poos", "mix"):
            assert oos is not None, f"{score} needs a model with an oos class"
            zz = z - z.max(axis=1)[:, None]
            p = np.exp(zz)
            p /= p.sum(axis=1)[:, None]
            p_oos = p[:, oos]
            p_in = p.copy()
            p_in[:, oos] = -1.0
            label = p_in.argmax(axis=1)
            top_in = p_in.max(axis=1)
            none = np.zeros(len(s), dtype=bool)
            if score == "poos":
                return label, -p_oos, none
            rest = np.maximum(1.0 - p_oos, 1e-300)
            return label, rest**param * (top_in / rest), none
        if score == "maxlogit":
            return top, z.max(axis=1), forced
        zt = z / param
        m = zt.max(axis=1)
        e = np.exp(zt - m[:, None])
        total = e.sum(axis=1)
        if score == "msp":
            return top, 1.0 / total, forced
        if score == "energy":
            return top, param * (m + np.log(total)), forced
        p = e / total[:, None]
        if score == "margin":
            two = np.partition(p, -2, axis=1)[:, -2:]
            return top, two[:, 1] - two[:, 0], forced
        if score == "negent":
            return top, (p * np.log(np.maximum(p, 1e-300))).sum(axis=1), forced
        raise ValueError(score)


@dataclass(frozen=True)
class Curve:
    """In-scope accuracy and oos recall at every threshold (accept when score >= t)."""

    thresholds: Float
    accuracy: Float
    recall: Float

    @classmethod
    def of(
        cls,
        label: NDArray[np.int64],
        score: Float,
        forced: NDArray[np.bool_],
        gold: NDArray[np.int64],
    ) -> Curve:
        """The curve of one decision rule (gold -1 marks an oos text)."""
        gold_oos = gold < 0
        right = (label == gold) & ~gold_oos & ~forced
        levels = np.unique(score)
        # 0 rejected by threshold, midpoints, and above all (reject all).
        t = np.concatenate([[-np.inf], (levels[:-1] + levels[1:]) / 2, [np.inf]])
        kept = np.sort(score[right])
        accuracy = (kept.size - np.searchsorted(kept, t, side="left")) / (~gold_oos).sum()
        missed = np.sort(score[gold_oos & ~forced])
        recall = ((gold_oos & forced).sum() + np.searchsorted(missed, t, "left")) / gold_oos.sum()
        return cls(t, accuracy, recall)

    def best(self, level: float) -> float:
        """Best in-scope accuracy at oos recall >= ``level``."""
        return float(self.accuracy[self.recall >= level].max())

    def score(self) -> float:
        """The selection criterion: ``best`` averaged over RECALL_LEVELS."""
        return float(np.mean([self.best(level) for level in RECALL_LEVELS]))

    def chosen(self, min_accuracy: float = 0.905, target_recall: float = 0.75) -> float:
        """choose_threshold's rule: feasible thresholds, max accuracy + recall, lowest tie."""
        feasible = (self.accuracy >= min_accuracy) & (self.recall >= target_recall)
        if not feasible.any():
            feasible = self.recall >= target_recall  # fall back: recall target only
        return float(
            self.thresholds[
                int(np.argmax(np.where(feasible, self.accuracy + self.recall, -np.inf)))
            ]
        )


def gold_index(labels: list[str], classes: tuple[str, ...]) -> NDArray[np.int64]:
    where = {c: i for i, c in enumerate(classes)}
    return np.array([-1 if y == OOS else where[y] for y in labels], dtype=np.int64)


def candidates(variant: str, c: float) -> list[tuple[str, str, float, float]]:
    """(name, score, penalty, param) of every candidate for one fitted model."""
    out = []
    for p in PENALTIES:
        for t in TEMPERATURES:
            out.append(("msp", p, t))
            out.append(("energy", p, t))
        out += [("maxlogit", p, 1.0), ("margin", p, 1.0), ("negent", p, 1.0)]
        if variant == "oos":
            out.append(("poos", p, 1.0))
            out += [("mix", p, a) for a in MIX]
    return [(f"{variant}/{c:g}/{s}/{p:g}/{q:g}", s, p, q) for s, p, q in out]


def parse(name: str) -> tuple[str, float, str, float, float]:
    variant, c, score, penalty, param = name.split("/")
    return variant, float(c), score, float(penalty), float(param)


def evaluate(raw: Raw, labels: list[str], score: str, penalty: float, param: float) -> Curve:
    label, s, forced = raw.decide(score, penalty, param)
    return Curve.of(label, s, forced, gold_index(labels, raw.classes))


def stage_dev() -> None:
    data = read()
    (train_x, train_y), (dev_x, dev_y) = data["train"], data["dev"]
    rows = []
    for variant in ("in", "oos"):
        for c in C_GRID:
            started = time.perf_counter()
            clf = fit(variant, c, train_x, train_y)
            seconds = time.perf_counter() - started
            raw = Raw.of(clf, dev_x)
            np.savez(
                CACHE / f"dev_{variant}_{c:g}.npz",
                scores=raw.scores,
                coverage=raw.coverage,
                classes=np.array(raw.classes),
            )
            for name, s, p, q in candidates(variant, c):
                curve = evaluate(raw, dev_y, s, p, q)
                rows.append({"name": name, "score": curve.score(), "at822": curve.best(LEVEL)})
            print(f"{variant} c={c:g}: fit {seconds:.1f} s", file=sys.stderr, flush=True)
    (CACHE / "dev.json").write_text(json.dumps(rows, indent=0))


def folds(labels: list[str], k: int, seed: int = 0) -> NDArray[np.int64]:
    """A stratified fold number for every text."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    by: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by.setdefault(y, []).append(i)
    for y in sorted(by):
        index = np.array(by[y])
        rng.shuffle(index)
        fold[index] = (np.arange(index.size) + rng.integers(k)) % k
    return fold


def pool(name: str) -> tuple[list[str], list[str]]:
    """The texts cross-validated: train+dev ("traindev") or train alone ("train")."""
    data = read()
    if name == "train":
        return data["train"]
    return data["train"][0] + data["dev"][0], data["train"][1] + data["dev"][1]


def stage_cv(settings: list[tuple[str, float]], pooled: str) -> None:
    texts, labels = pool(pooled)
    fold = folds(labels, FOLDS)
    prefix = "cv" if pooled == "traindev" else f"cv{pooled}"
    for variant, c in settings:
        for f in range(FOLDS):
            path = CACHE / f"{prefix}_{variant}_{c:g}_{f}.npz"
            if path.exists():
                continue
            train = np.flatnonzero(fold != f)
            held = np.flatnonzero(fold == f)
            started = time.perf_counter()
            clf = fit(variant, c, [texts[i] for i in train], [labels[i] for i in train])
            raw = Raw.of(clf, [texts[i] for i in held])
            np.savez(
                path,
                scores=raw.scores,
                coverage=raw.coverage,
                classes=np.array(raw.classes),
                held=held,
            )
            print(
                f"cv {variant} c={c:g} fold {f}: {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )


def load(path: Path) -> tuple[Raw, NDArray[np.int64] | None]:
    z = np.load(path)
    raw = Raw(z["scores"], z["coverage"], tuple(str(c) for c in z["classes"]))
    return raw, (z["held"] if "held" in z.files else None)


def cv_scores(
    names: list[str], pooled: str = "traindev"
) -> dict[str, tuple[list[float], list[float]]]:
    """Per fold (score, accuracy at 0.822) of each candidate, from the cached CV fits."""
    labels = pool(pooled)[1]
    prefix = "cv" if pooled == "traindev" else f"cv{pooled}"
    out: dict[str, tuple[list[float], list[float]]] = {}
    for name in names:
        variant, c, s, p, q = parse(name)
        scores, at = [], []
        for f in range(FOLDS):
            raw, held = load(CACHE / f"{prefix}_{variant}_{c:g}_{f}.npz")
            assert held is not None
            curve = evaluate(raw, [labels[i] for i in held], s, p, q)
            scores.append(curve.score())
            at.append(curve.best(LEVEL))
        out[name] = (scores, at)
    return out


def stage_test(names: list[str]) -> None:
    data = read()
    (train_x, train_y), (dev_x, dev_y), (test_x, test_y) = data["train"], data["dev"], data["test"]
    fitted: dict[tuple[str, float], LocalClassifier] = {}
    hits: dict[str, dict[str, NDArray[np.bool_]]] = {}
    lines = [
        "| candidate | dev score | test score | test acc @ recall>=0.822 (hindsight) "
        "| dev-chosen threshold: test acc | test recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in [DEFAULT, *names]:
        variant, c, s, p, q = parse(name)
        if (variant, c) not in fitted:
            fitted[(variant, c)] = fit(variant, c, train_x, train_y)
        clf = fitted[(variant, c)]
        dev_raw, test_raw = Raw.of(clf, dev_x), Raw.of(clf, test_x)
        dev_curve = evaluate(dev_raw, dev_y, s, p, q)
        threshold = dev_curve.chosen()
        label, score, forced = test_raw.decide(s, p, q)
        gold = gold_index(test_y, test_raw.classes)
        curve = Curve.of(label, score, forced, gold)
        in_scope = gold >= 0
        right = (label == gold) & ~forced
        # Hindsight operating point at recall >= 0.822 and the dev-chosen threshold.
        feasible = curve.recall >= LEVEL
        t822 = curve.thresholds[np.flatnonzero(feasible)[np.argmax(curve.accuracy[feasible])]]
        hits[name] = {
            "822": (right & (score >= t822))[in_scope],
            "dev": (right & (score >= threshold))[in_scope],
        }
        rejected = forced | (score < threshold)
        acc = float(hits[name]["dev"].mean())
        rec = float(rejected[~in_scope].mean())
        lines.append(
            f"| `{name}` | {dev_curve.score():.4f} | {curve.score():.4f} | "
            f"{curve.best(LEVEL):.4f} | {acc:.4f} | {rec:.4f} |"
        )
    lines += [
        "",
        "Paired bootstrap against the default over the in-scope test texts "
        "(10,000 resamples; oos recall is not resampled, each at its own threshold):",
        "",
        "| candidate | operating point | difference | 95% interval | texts that differ |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    rng = np.random.default_rng(0)
    size = hits[DEFAULT]["dev"].size
    draws = rng.integers(0, size, size=(10_000, size))
    for name in names:
        for point in ("822", "dev"):
            a, b = hits[name][point], hits[DEFAULT][point]
            d = a[draws].mean(axis=1) - b[draws].mean(axis=1)
            low, high = np.percentile(d, [2.5, 97.5])
            what = "hindsight recall>=0.822" if point == "822" else "dev-chosen threshold"
            lines.append(
                f"| `{name}` | {what} | {a.mean() - b.mean():+.4f} | "
                f"[{low:+.4f}, {high:+.4f}] | {int((a != b).sum())} |"
            )
    print("\n".join(lines))


POWERS = (0, 1, 2, 3, 5, 10, 20, 40, 80, 160)


def forced_mix(raw: Raw, power: float) -> tuple[NDArray[np.int64], Float, NDArray[np.bool_]]:
    """What chainkit does, at one power.

    The oos class answers where it scores highest; any other answer gets the confidence
    P(best) * P(in scope) ** power (``mix`` with a = power + 1).
    """
    label, score, _ = raw.decide("mix", 1.0, power + 1.0)
    oos = raw.classes.index(OOS)
    top = raw.scores.argmax(axis=1)
    return np.where(top == oos, top, label), score, top == oos


def stage_power() -> None:
    """The power of P(in scope), on dev and both CVs of the oos/30 fits (no test)."""
    data = read()
    raw, _ = load(CACHE / "dev_oos_30.npz")
    dev_gold = gold_index(data["dev"][1], raw.classes)
    dev = {p: Curve.of(*forced_mix(raw, p), dev_gold).score() for p in POWERS}
    cv: dict[str, dict[int, Float]] = {}
    for pooled, prefix in (("train", "cvtrain"), ("traindev", "cv")):
        labels = pool(pooled)[1]
        cv[pooled] = {}
        for p in POWERS:
            folds_ = []
            for f in range(FOLDS):
                raw, held = load(CACHE / f"{prefix}_oos_30_{f}.npz")
                assert held is not None
                gold = gold_index([labels[i] for i in held], raw.classes)
                folds_.append(Curve.of(*forced_mix(raw, p), gold).score())
            cv[pooled][p] = np.array(folds_)
    print("| power | dev | CV train | vs power 0 | CV train+dev | vs power 0 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in POWERS:
        cells = [f"{p}", f"{dev[p]:.4f}"]
        for pooled in ("train", "traindev"):
            d = cv[pooled][p] - cv[pooled][0]
            spread = d.std(ddof=1) / np.sqrt(FOLDS)
            won = f"({(d > 0).sum()}/{FOLDS})"
            cells += [f"{cv[pooled][p].mean():.4f}", f"{d.mean():+.4f} +- {spread:.4f} {won}"]
        print("| " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=("dev", "cv", "cvreport", "power", "test"))
    parser.add_argument("--candidates", nargs="*", default=[])
    parser.add_argument("--settings", nargs="*", default=["in/30", "oos/30"])
    parser.add_argument("--pool", choices=("traindev", "train"), default="traindev")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.stage == "dev":
        stage_dev()
    elif args.stage == "cv":
        stage_cv([(v, float(c)) for v, c in (s.split("/") for s in args.settings)], args.pool)
    elif args.stage == "power":
        stage_power()
    elif args.stage == "cvreport":
        names = [DEFAULT, *args.candidates]
        result = cv_scores(names, args.pool)
        base = np.array(result[DEFAULT][0])
        for name in names:
            s, a = map(np.array, result[name])
            d = s - base
            print(
                f"| `{name}` | {s.mean():.4f} | {a.mean():.4f} | {d.mean():+.4f} | "
                f"{d.std(ddof=1) / np.sqrt(FOLDS):.4f} | {(d > 0).sum()}/{FOLDS} | "
                + " ".join(f"{x:.4f}" for x in s)
                + " |"
            )
    else:
        assert 1 <= len(args.candidates) <= 2, "at most two pre-registered candidates"
        stage_test(args.candidates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
