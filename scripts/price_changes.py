#!/usr/bin/env python3
# ruff: noqa: D103, E501  (a one-off report generator: its long lines are table templates)
"""Every price issue 12 changed: the default catalogue before the merge against the one after.

Usage (from anywhere; read-only on the repository):

    .venv/bin/python scripts/price_changes.py [--old-rev 84e4973^]
        [--new-rev fa4c3ae] [--out docs/price-changes-bedrock-2026-11-29.md]

The old and new default catalogue names are read from DEFAULT_CATALOGUE in chainkit/pricing.py at
each revision; the JSON files are read with `git show`, so the working tree is never touched.
Rows are keyed by (model id, region, tier). "Changed" compares every price field of a row present
in both; a field absent or null on one side and priced on the other counts as changed.
For removed rows, the section also shows what the new catalogue (with the current chainkit code,
if importable) now charges for a call to that model in that region and tier.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

PRICE_FIELDS = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "per_1k_queries",
    "per_1k_requests",
    "tiers",
)


def git_show(repo: str, rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def default_name(repo: str, rev: str) -> str:
    src = git_show(repo, rev, "chainkit/pricing.py")
    m = re.search(r'^DEFAULT_CATALOGUE\s*=\s*"([^"]+)"', src, re.M)
    if not m:
        sys.exit(f"no DEFAULT_CATALOGUE in chainkit/pricing.py at {rev}")
    return m.group(1)


def load(repo: str, rev: str, name: str) -> dict[str, Any]:
    return json.loads(git_show(repo, rev, f"chainkit/data/{name}.json"))


def norm(value: Any) -> Any:
    """A comparable, printable form of a price field (Decimal strings normalised)."""
    if value is None:
        return None
    if isinstance(value, (str, int, float)):
        d = Decimal(str(value))
        return format(d.normalize(), "f") if d == d.to_integral() else str(d.normalize())
    if isinstance(value, list):  # long-context tiers
        return json.dumps(value, sort_keys=True)
    return json.dumps(value, sort_keys=True)


def rows(cat: dict[str, Any]) -> dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, Any]]]:
    out = {}
    for card in cat["models"]:
        for price in card["prices"]:
            key = (card["id"], price["region"], price["tier"])
            assert key not in out, key
            out[key] = (card, price)
    return out


def fmt(v: Any) -> str:
    return "—" if v is None else f"{v}"


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def short_source(url: str) -> str:
    """A readable label for a source URL (the full URL is kept in the source list)."""
    m = re.match(r"https://github\.com/([^/]+/[^/]+)/blob/([0-9a-f]{7})", url)
    if m:
        return f"{m.group(1)}@{m.group(2)}"
    m = re.match(r"https://pypi\.org/project/([^/]+)/([^/]+)/?", url)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    return url


def now_priced(new_file_json: str, model: str, region: str, tier: str) -> str:
    """What the new catalogue charges now for ``model`` called in ``region``/``tier``."""
    try:
        import tempfile

        from chainkit import Catalogue  # the current code, as installed
    except Exception as exc:  # pragma: no cover
        return f"(chainkit not importable: {exc})"
    global _NEW_CAT
    if _NEW_CAT is None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            fh.write(new_file_json)
        _NEW_CAT = Catalogue.from_file(fh.name)
    try:
        p = _NEW_CAT.price(model, region, tier)
    except Exception as exc:
        return f"refused ({type(exc).__name__}: {md_escape(str(exc).split('. ')[0])})"
    parts = [f"{p.input}/{p.output}"]
    if p.cache_read is not None or p.cache_write is not None:
        parts.append(f"cache {fmt(p.cache_read)}/{fmt(p.cache_write)}/{fmt(p.cache_write_1h)}")
    return (
        f"{' '.join(parts)} (row {p.region}/{p.tier}; [{short_source(p.source_url)}]"
        f"({p.source_url}), {p.effective_date}, {p.confidence})"
    )


_NEW_CAT = None


PROBE = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
from chainkit import Catalogue
cat = Catalogue.from_file(sys.argv[1])
out = {}
for line in sys.stdin:
    mid, region, tier = json.loads(line)
    try:
        p = cat.price(mid, region, tier)
        got = [str(getattr(p, f, None)) if getattr(p, f, None) is not None else None
               for f in ("input", "output", "cache_read", "cache_write", "cache_write_1h")]
        got.append(p.region)
    except Exception as exc:
        got = "refused: " + str(exc).split(". ")[0]
    out[json.dumps([mid, region, tier])] = got
print(json.dumps(out))
"""

REGIONS = (
    None,
    "us-east-1",
    "us-west-2",
    "eu-central-1",
    "eu-west-1",
    "eu-west-3",
    "ap-northeast-1",
)
GEO = {
    "us": ("us-",),
    "eu": ("eu-",),
    "apac": ("ap-",),
    "jp": ("ap-northeast-1",),
    "au": ("ap-southeast-2",),
    "global": (),
}


def probes(old_cat: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """Every id and alias of the old catalogue, in the regions a call could name."""
    out = []
    for card in old_cat["models"]:
        tiers = sorted({p["tier"] for p in card["prices"]})
        # The id and its cross-region profile ids; plain aliases (claude-3-haiku) price as the id.
        ids = [card["id"], *(a for a in card.get("aliases", []) if a.split(".", 1)[0] in GEO)]
        for mid in ids:
            prefix = mid.split(".", 1)[0]
            for region in REGIONS:
                if prefix in GEO and region is not None and not region.startswith(GEO[prefix]):
                    continue
                for tier in tiers:
                    out.append((mid, region, tier))
    return out


def resolve_with(
    repo: str, rev: str, catalogue_json: str, keys: list[tuple[Any, ...]], python: str
) -> dict[str, Any]:
    """Price ``keys`` with the chainkit code of ``rev`` (None: the installed code)."""
    import os
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if rev is not None:
            archive = subprocess.run(
                ["git", "-C", repo, "archive", rev, "chainkit"], check=True, capture_output=True
            ).stdout
            import io

            with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
                tf.extractall(tmp)
            env["PYTHONPATH"] = tmp
        path = os.path.join(tmp, "cat.json")
        with open(path, "w") as fh:
            fh.write(catalogue_json)
        stdin = "\n".join(json.dumps(list(k)) for k in keys)
        res = subprocess.run(
            [python, "-c", PROBE, path],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=tmp,
            env=env,
        )
        if res.returncode:
            sys.exit(res.stderr)
        return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--old-rev", default="84e4973^")
    ap.add_argument("--new-rev", default="fa4c3ae")
    ap.add_argument("--out", default="docs/price-changes-bedrock-2026-11-29.md")
    args = ap.parse_args()

    old_name, new_name = (
        default_name(args.repo, args.old_rev),
        default_name(args.repo, args.new_rev),
    )
    old_cat, new_cat = (
        load(args.repo, args.old_rev, old_name),
        load(args.repo, args.new_rev, new_name),
    )
    new_json = git_show(args.repo, args.new_rev, f"chainkit/data/{new_name}.json")
    old_rows, new_rows = rows(old_cat), rows(new_cat)
    both = [k for k in old_rows if k in new_rows]
    added = [k for k in new_rows if k not in old_rows]
    removed = [k for k in old_rows if k not in new_rows]

    changed: list[tuple[tuple[str, str, str], str, Any, Any, dict[str, Any]]] = []
    meta_only: list[tuple[tuple[str, str, str], list[str]]] = []
    for key in both:
        (_, op), (_, np_) = old_rows[key], new_rows[key]
        diffs = []
        for f in PRICE_FIELDS:
            a, b = norm(op.get(f)), norm(np_.get(f))
            if a != b:
                diffs.append((f, a, b))
                changed.append((key, f, a, b, np_))
        if not diffs:
            moved = [f for f in ("source_url", "effective_date") if op.get(f) != np_.get(f)]
            if moved:
                meta_only.append((key, moved))

    value_changes = [c for c in changed if c[2] is not None and c[3] is not None]
    newly_priced = [c for c in changed if c[2] is None and c[3] is not None]
    unpriced = [c for c in changed if c[2] is not None and c[3] is None]

    sources: dict[str, int] = {}
    lines: list[str] = []
    w = lines.append
    w("# Issue 12: every price changed in the default catalogue\n")
    w(
        f"Default before the merge: **{old_name}** (`git show {args.old_rev}:chainkit/data/"
        f"{old_name}.json`, {len(old_cat['models'])} models, {len(old_rows)} price rows). "
        f"Default after: **{new_name}** (`{args.new_rev}`, {len(new_cat['models'])} models, "
        f"{len(new_rows)} price rows). `{old_name}` stays bundled and loadable by name, unchanged.\n"
    )
    w(
        "Rows are keyed by (model id, region, tier); prices in USD per 1M tokens. "
        "Generated by `scripts/price_changes.py`.\n"
    )
    w("## Summary\n")
    w(f"- Rows in both catalogues: {len(both)}")
    w(
        f"- Price fields changed in those rows: **{len(changed)}** "
        f"({len(value_changes)} value changed, {len(newly_priced)} newly priced where the old row "
        f"had none, {len(unpriced)} dropped)"
    )
    w(f"- Rows in both with identical prices but a new source or date: {len(meta_only)}")
    w(
        f"- Rows added: **{len(added)}** (on {len({k[0] for k in added})} model ids, "
        f"{len({k[0] for k in added} - {k[0] for k in old_rows})} of them new models)"
    )
    w(f"- Rows removed: **{len(removed)}**\n")

    w("## Changed price fields (rows present in both)\n")
    w(
        "| model id | region | tier | field | old | new | new source (date, confidence) | new row's note |"
    )
    w("|---|---|---|---|---|---|---|---|")
    for (mid, region, tier), f, a, b, np_ in changed:
        src = np_["source_url"]
        sources[src] = sources.get(src, 0) + 1
        w(
            f"| `{mid}` | {region} | {tier} | {f} | {fmt(a)} | {fmt(b)} | "
            f"[{short_source(src)}]({src}) ({np_['effective_date']}, {np_.get('confidence', '?')}) | "
            f"{md_escape(np_.get('note') or '')} |"
        )
    w("")

    if meta_only:
        w("## Same prices, new source or date\n")
        w("| model id | region | tier | old source (date) | new source (date) |")
        w("|---|---|---|---|---|")
        for key, _moved in meta_only:
            (_, op), (_, np_) = old_rows[key], new_rows[key]
            w(
                f"| `{key[0]}` | {key[1]} | {key[2]} | {short_source(op['source_url'])} "
                f"({op['effective_date']}) | {short_source(np_['source_url'])} "
                f"({np_['effective_date']}) |"
            )
        w("")

    w("## Rows removed\n")
    if not removed:
        w("None.\n")
    else:
        w(
            "| model id | region | tier | old input/output | old cache read/write | old source (date) | "
            "a call to that model in that region is now priced at |"
        )
        w("|---|---|---|---|---|---|---|")
        for key in removed:
            _, op = old_rows[key]
            w(
                f"| `{key[0]}` | {key[1]} | {key[2]} | {norm(op['input'])}/{norm(op['output'])} | "
                f"{fmt(norm(op.get('cache_read')))}/{fmt(norm(op.get('cache_write')))} | "
                f"{short_source(op['source_url'])} ({op['effective_date']}) | "
                f"{now_priced(new_json, *key)} |"
            )
        w("")

    # Effective prices: what a call was priced at before (old code, old catalogue) and now.
    old_json = git_show(args.repo, args.old_rev, f"chainkit/data/{old_name}.json")
    keys = probes(old_cat)
    before = resolve_with(args.repo, args.old_rev, old_json, keys, sys.executable)
    after = resolve_with(args.repo, None, new_json, keys, sys.executable)

    def same(b: Any, a: Any) -> bool:
        # Refused both before and now (whatever the wording) is no change.
        return (isinstance(b, str) and isinstance(a, str)) or b == a

    moved_calls = [
        (k, before[json.dumps(list(k))], after[json.dumps(list(k))])
        for k in keys
        if not same(before[json.dumps(list(k))], after[json.dumps(list(k))])
    ]

    def show(v: Any) -> str:
        if isinstance(v, str):
            return "refused" + (
                " (no price in its geography)"
                if "geography" in v
                else " (no price in that region)"
                if "in region" in v
                else " (no such tier)"
                if "price; it is priced for tiers" in v
                else " (unknown model)"
                if "Unknown model" in v
                else ""
            )
        i, o, cr, cw, c1h, region = v
        text = f"{norm(i)}/{norm(o)}"
        if cr or cw or c1h:
            text += f" cache {fmt(norm(cr))}/{fmt(norm(cw))}/{fmt(norm(c1h))}"
        return f"{text} [{region}]"

    w("## Calls whose price changed (old code + old catalogue vs current code + new catalogue)\n")
    w(
        f"Every model id of `{old_name}` and its cross-region profile ids (us., eu., apac., "
        "global.; plain aliases price as the id), called with no region or "
        f"from {', '.join(r for r in REGIONS if r)} (profile ids only from regions in their "
        "geography), in each tier the old card priced: input/output, then cache "
        "read/5-minute write/1-hour write, then the row used. "
        f"{len(moved_calls)} of {len(keys)} such calls are priced differently.\n"
    )
    w("| model id called | region | tier | before | now |")
    w("|---|---|---|---|---|")
    for (mid, region, tier), b, a in moved_calls:
        w(f"| `{mid}` | {region or '(none)'} | {tier} | {show(b)} | {show(a)} |")
    w("")
    w("## Rows added\n")
    by_group: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    providers = {c["id"]: c["provider"] for c in new_cat["models"]}
    old_ids = {k[0] for k in old_rows}
    for mid, region, tier in added:
        group = providers[mid] + (" — existing models" if mid in old_ids else " — new models")
        by_group[group][mid].append(region if tier == "on_demand" else f"{region} {tier}")
    for group in sorted(by_group):
        models = by_group[group]
        n = sum(len(v) for v in models.values())
        w(f"**{group}** ({n} rows, {len(models)} models)\n")
        for mid in sorted(models):
            w(f"- `{mid}`: {', '.join(models[mid])}")
        w("")

    w("## Sources of the changed fields\n")
    for src, n in sorted(sources.items(), key=lambda kv: -kv[1]):
        w(f"- {n} field(s): {src}")
    w("")
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print(
        f"{old_name} -> {new_name}: {len(both)} rows in both, {len(changed)} changed price fields "
        f"({len(value_changes)} values, {len(newly_priced)} newly priced, {len(unpriced)} dropped), "
        f"{len(meta_only)} source-only changes, {len(added)} rows added, {len(removed)} removed, "
        f"{len(moved_calls)}/{len(keys)} probed calls priced differently "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    main()
