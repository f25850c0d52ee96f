"""Chained summarisation: a small model summarises, the strong model writes from the summary.

Real documents (QMSum meetings, ScisummNet papers, or any JSONL of {id, document, summary})::

    python -m recipes.summarisation --data-dir ../shared/data --dataset qmsum [--plot cost.png]

Variants on the same documents, priced from the current Bedrock catalogue: ``lazy`` (the strong
model reads each document), ``chained`` (a small model summarises first, map-reduce when a
document exceeds its context window), ``compressed-chained`` (a free Compress stage first) and
``chained-batch`` (chained as two Bedrock batch inference jobs, at batch prices; simulated
locally offline). ROUGE against the human references; with ``--ledger run.db --resume`` an
interrupted run continues where it stopped without paying twice.

Seed scenario (the article's figures, through the real pipeline, ledger and catalogue)::

    python -m recipes.summarisation --scenario seed [--format json]

200 documents of 10,000 tokens. ``lazy``: Claude 3 Sonnet reads each document and writes 1,000
tokens. ``chained``: Mixtral 8x7B writes a 500-token summary, then Claude 3 Sonnet writes 1,000
tokens from it. The models are scripted to report the article's token counts; everything else
(stages, ledger entries, pricing from the ``seed-2024`` catalogue, the report) runs for real.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from chainkit import (
    Catalogue,
    Generate,
    Ledger,
    Model,
    Pipeline,
    Prompt,
    Report,
    Request,
    ScriptedModel,
    Summarise,
    Usage,
)
from chainkit.cli import count, run_command
from chainkit.ledger.sql import SQLLedger
from chainkit.money import usd
from chainkit.providers.offline import extract
from recipes import long_docs
from recipes.common import (
    RESUME,
    add_output_options,
    add_provider_options,
    check_bedrock,
    folder,
    make_model,
    open_ledger,
    recipe_parser,
    render,
    seconds,
    share,
)

SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
ARTICLE = {"lazy_usd": "9.00", "chained_usd": "4.2", "savings_pct": "46"}
ASK = "Write a 1,000-token report of this document for the leadership team."


def seed_documents(count: int, tokens: int = 10_000) -> list[str]:
    """``count`` distinct synthetic documents of about ``tokens`` tokens (4 characters each)."""
    docs = []
    for i in range(count):
        sentences = []
        length = 0
        j = 0
        while length < tokens * 4:
            s = f"Document {i}, finding {j}: measure {(i * 7919 + j * 104729) % 1000} moved. "
            sentences.append(s)
            length += len(s)
            j += 1
        docs.append("".join(sentences)[: tokens * 4])
    return docs


def _summary(prompt: Prompt) -> str:
    return extract(prompt.user, 500)


def seed_variants(
    catalogue: Catalogue, *, provider: str = "offline", region: str | None = None
) -> list[tuple[str, Pipeline]]:
    """The article's two variants: scripted to its token counts, or the real Bedrock models."""
    if provider == "offline":
        lazy_sonnet: Model = ScriptedModel(
            model_id=SONNET, reply="report", usage=Usage(10_000, 1_000)
        )
        mixtral: Model = ScriptedModel(model_id=MIXTRAL, reply=_summary, usage=Usage(10_000, 500))
        chained_sonnet: Model = ScriptedModel(
            model_id=SONNET, reply="report", usage=Usage(500, 1_000)
        )
    else:
        lazy_sonnet = chained_sonnet = make_model(provider, SONNET, region)
        mixtral = make_model(provider, MIXTRAL, region)
    lazy = Pipeline(
        [
            Generate(
                model=lazy_sonnet,
                max_tokens=1_000,
                catalogue=catalogue,
            )
        ],
        name="lazy",
    )
    chained = Pipeline(
        [
            Summarise(
                model=mixtral,
                max_tokens=500,
                catalogue=catalogue,
            ),
            Generate(
                model=chained_sonnet,
                max_tokens=1_000,
                catalogue=catalogue,
            ),
        ],
        name="chained",
    )
    return [("lazy", lazy), ("chained", chained)]


def run_seed(
    documents: int,
    ledger: Ledger,
    *,
    provider: str = "offline",
    region: str | None = None,
    resume: bool = False,
) -> Report:
    """Run both seed variants over the same documents and report them."""
    catalogue = Catalogue.load("seed-2024")
    docs = seed_documents(documents)
    variants = seed_variants(catalogue, provider=provider, region=region)
    for name, pipeline in variants:
        requests = [
            Request(ASK, id=f"{name}-{i:04d}", document=doc, tags={"variant": name})
            for i, doc in enumerate(docs)
        ]
        pipeline.run_batch(requests, ledger, concurrency=4, resume=RESUME if resume else False)
    report = Report.from_ledger(ledger, variants=[name for name, _ in variants])
    lazy, chained = report.variants
    notes = [
        f"Measured: lazy {usd(lazy.total_cost)}, chained {usd(chained.total_cost)} for "
        f"{documents} documents; chained saves {chained.savings_pct}%.",
    ]
    if provider == "offline" and documents == 200 and chained.savings_pct is not None:
        gap = chained.savings_pct - Decimal(ARTICLE["savings_pct"])
        notes.append(
            f"The article printed ${ARTICLE['chained_usd']} and {ARTICLE['savings_pct']}% for the "
            f"chained approach; its own prices give {usd(chained.total_cost)} and "
            f"{chained.savings_pct}%, {gap} percentage points more than it states."
        )
    return Report(
        report.variants,
        assumptions={
            "scenario": "seed",
            "catalogue": catalogue.name,
            "documents": documents,
            "document_tokens": 10_000,
            "summary_tokens": 500,
            "report_tokens": 1_000,
            "provider": provider,
            "token_counts": (
                "scripted to the article's figures"
                if provider == "offline"
                else "as reported by Bedrock"
            ),
            "article": ARTICLE,
        },
        notes=tuple(notes),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recipe from the command line; return the exit status (2: a bad argument)."""
    parser = recipe_parser("python -m recipes.summarisation", __doc__)
    parser.add_argument(
        "--scenario",
        choices=["seed", "data"],
        default=None,
        help="seed: the article's figures (default); data: real documents (default with "
        "--data-dir)",
    )
    parser.add_argument("--documents", type=count, default=200, help="seed: documents to run")
    parser.add_argument(
        "--data-dir", type=folder, default=None, help="folder with qmsum/ and scisummnet/"
    )
    parser.add_argument(
        "--dataset",
        default="qmsum",
        help=f"{', '.join(long_docs.DATASETS)} (under --data-dir), or the path of a JSONL file of "
        "{id, document, summary} lines",
    )
    parser.add_argument("--split", default=None, help="only this split (train/dev/test)")
    parser.add_argument("--limit", type=count, default=None, help="only the first N documents")
    parser.add_argument("--summariser", default=None, help="catalogue id of the small model")
    parser.add_argument("--generator", default=None, help="catalogue id of the strong model")
    parser.add_argument(
        "--compress-to", type=share, default=None, help="Compress budget, share of the document"
    )
    parser.add_argument(
        "--concurrency", type=count, default=4, help="requests run at once (default 4)"
    )
    parser.add_argument(
        "--latency", type=seconds, default=0.0, help="offline: simulated seconds per model call"
    )
    parser.add_argument("--plot", type=Path, default=None, help="save cost vs length plot here")
    parser.add_argument("--batch-bucket", default=None, help="bedrock: S3 bucket for batch jobs")
    parser.add_argument("--batch-role", default=None, help="bedrock: IAM role ARN for batch")
    add_provider_options(parser)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.scenario is None:
        args.scenario = "data" if args.data_dir is not None else "seed"
    if args.scenario == "data" and args.data_dir is None:
        parser.error("the data scenario needs --data-dir (e.g. --data-dir ../shared/data)")
    return run_command(lambda: _run(args), prog=parser.prog, debug=getattr(args, "debug", False))


def _run(args: argparse.Namespace) -> int:
    if args.scenario == "data":
        # A wrong name or folder fails before a ledger is written or anything is paid.
        long_docs.dataset_path(args.data_dir, args.dataset)
    if args.provider == "bedrock":
        check_bedrock(args.region)
    ledger = open_ledger(args.ledger, resume=args.resume)
    points = None
    try:
        if args.scenario == "seed":
            report = run_seed(
                args.documents,
                ledger,
                provider=args.provider,
                region=args.region,
                resume=args.resume,
            )
        else:
            options = {
                key: value
                for key, value in {
                    "summariser": args.summariser,
                    "generator": args.generator,
                    "compress_to": args.compress_to,
                }.items()
                if value is not None
            }
            report, points = long_docs.run(
                args.data_dir,
                args.dataset,
                ledger,
                provider=args.provider,
                region=args.region,
                split=args.split,
                limit=args.limit,
                resume=args.resume,
                concurrency=args.concurrency,
                batch_bucket=args.batch_bucket,
                batch_role=args.batch_role,
                latency_s=args.latency,
                **options,
            )
    finally:
        if isinstance(ledger, SQLLedger):
            ledger.close()
    print(render(report, args.format))
    if args.plot is not None:
        from chainkit.plots import plot_cost_vs_length, plot_report

        if points is None:
            plot_report(report, args.plot)
        else:
            plot_cost_vs_length(points, args.plot)
        print(f"plot saved to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
