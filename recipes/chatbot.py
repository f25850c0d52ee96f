"""A support chatbot that answers most traffic without the expensive model.

Demo (the default; offline, on traffic the project ships in ``recipes/data``)::

    python -m recipes.chatbot

``single-llm`` sends every message to Claude Sonnet 4. ``well-architected`` labels the intent
with keyword rules (free), answers greetings, thanks and goodbyes with canned replies, answers
policy questions from replies precomputed once by Nova Micro, and lets Nova Micro answer the
rest. The offline model stands in for both models: its token counts are real counts of the real
prompts; the wording of its answers is a stand-in.

Seed scenario (the article's figures through the real pipeline, ledger and catalogue)::

    python -m recipes.chatbot --scenario seed --traffic 10000 [--format json]

``single-llm``: the "powerful" model processes 100 tokens per interaction at $0.06 per 1K.
``well-architected``: the intent model pre-scans every interaction (20 tokens at $0.003 per 1K);
half are answered by canned or precomputed replies; the responder answers the other half (50
tokens at $0.006 per 1K).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from decimal import Decimal, localcontext
from pathlib import Path

from chainkit import (
    Canned,
    Catalogue,
    Entry,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    LLMClassifier,
    Pipeline,
    Precomputed,
    Prompt,
    ReplyStore,
    Report,
    Request,
    ScriptedModel,
    Usage,
    precompute,
)
from chainkit.cli import count, run_command
from chainkit.ledger.sql import SQLLedger
from chainkit.money import ROUNDING, usd
from chainkit.report import money
from recipes.common import (
    REPLY_TOKENS,
    RESUME,
    SMALL,
    STRONG,
    add_output_options,
    add_provider_options,
    check_bedrock,
    folder,
    make_model,
    open_ledger,
    recipe_parser,
    render,
    share,
)

DEMO_TRAFFIC = Path(__file__).parent / "data" / "demo_traffic.jsonl"
DAYS = 30

CANNED = {
    "greeting": (
        "Hello! I can help with orders, deliveries, refunds and payments. What do you need?"
    ),
    "thanks": "You're welcome! Is there anything else I can help with?",
    "goodbye": "Thanks for shopping with us. Goodbye!",
}
POLICY_QUESTIONS = {
    "delivery_options": "What delivery options does the shop offer, with prices and times?",
    "check_refund_policy": "What is the shop's refund and returns policy?",
    "check_payment_methods": "Which payment methods does the shop accept?",
}
DEMO_RULES = {
    "greeting": ["hi", "hello", "hey", "good morning", "good afternoon"],
    "thanks": ["thanks", "thank you", "cheers"],
    "goodbye": ["bye", "goodbye", "that's all"],
    "delivery_options": ["delivery options", "shipping", "ship", "deliver"],
    "check_refund_policy": ["refund policy", "return policy", "return an item", "return something"],
    "check_payment_methods": [
        "payment methods",
        "pay with",
        "paying",
        "american express",
        "paypal",
    ],
}


def _read_demo() -> list[dict[str, str]]:
    with DEMO_TRAFFIC.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_demo(
    ledger: Ledger,
    traffic: int,
    *,
    provider: str = "offline",
    region: str | None = None,
    resume: bool = False,
) -> Report:
    """Both variants over the shipped demo traffic, priced from the current Bedrock catalogue."""
    catalogue = Catalogue.load()
    rows = _read_demo()
    small = make_model(provider, SMALL, region, output_tokens=REPLY_TOKENS)
    strong = make_model(provider, STRONG, region, output_tokens=REPLY_TOKENS)
    with tempfile.TemporaryDirectory(prefix="chainkit-replies-") as tmp:
        store = ReplyStore(tmp)
        # Policy replies are written once, ahead of time; that spend is one-off setup.
        precompute(
            store,
            POLICY_QUESTIONS,
            model=small,
            ledger=ledger,
            catalogue=catalogue,
            tags={"variant": "well-architected"},
            resume=resume,
        )
        variants = {
            "single-llm": Pipeline(
                [Generate(model=strong, max_tokens=300, catalogue=catalogue)],
                name="single-llm",
            ),
            "well-architected": Pipeline(
                [
                    IntentScan(classifier=KeywordClassifier(DEMO_RULES)),
                    Canned(replies=CANNED),
                    # Policy replies are the same for every customer: safe to share.
                    Precomputed(store=store, keys=dict.fromkeys(POLICY_QUESTIONS, ())),
                    Generate(model=small, max_tokens=300, catalogue=catalogue),
                ],
                name="well-architected",
            ),
        }
        for name, pipeline in variants.items():
            requests = [
                Request(row["text"], id=f"{name}:{row['id']}", tags={"variant": name})
                for row in rows
            ]
            pipeline.run_batch(requests, ledger, concurrency=4, resume=RESUME if resume else False)
        store.close()
    report = Report.from_ledger(ledger, variants=list(variants), traffic_per_day=traffic)
    return Report(
        report.variants,
        traffic_per_day=traffic,
        assumptions={
            "scenario": "demo",
            "catalogue": catalogue.name,
            "requests": len(rows),
            "strong_model": STRONG,
            "small_model": SMALL,
            "provider": provider,
            "models": (
                "offline stand-ins: real token counts of the real prompts, stand-in wording"
                if provider == "offline"
                else "Amazon Bedrock, usage as reported by Converse"
            ),
        },
        notes=(
            f"Policy replies were precomputed once for {usd(report.variants[1].setup_cost)} "
            "(one-off, not projected).",
        ),
    )


SEED_TEMPLATES = [
    ("greeting", "Hi there, good morning!"),
    ("delivery_options", "What delivery options do you offer?"),
    ("track_order", "Where is my order {n}?"),
    ("cancel_order", "Please cancel my order {n}."),
]


def seed_traffic(count: int) -> list[tuple[str, str]]:
    """``count`` (text, intent) pairs: a quarter canned, a quarter precomputed, half responder."""
    out = []
    for i in range(count):
        intent, template = SEED_TEMPLATES[i % len(SEED_TEMPLATES)]
        out.append((template.format(n=10_000 + i), intent))
    return out


def _article_monthly(entries: list[Entry], traffic: int) -> Decimal:
    """The article's method: pre-scan cost counted only for the interactions the responder took."""
    deflected = {
        e.request_id
        for e in entries
        if e.stage in ("canned", "precomputed") and e.outcome == "answered"
    }
    spent = sum(
        (
            e.cost or Decimal(0)
            for e in entries
            if not (e.stage == "intent_scan" and e.request_id in deflected)
        ),
        Decimal(0),
    )
    requests = len({e.request_id for e in entries})
    with localcontext(ROUNDING):
        return spent * traffic * DAYS / requests


def run_seed(ledger: Ledger, traffic: int, count: int, *, resume: bool = False) -> Report:
    """The article's chatbot with models scripted to its token counts."""
    catalogue = Catalogue.load("seed-2024")
    traffic_rows = seed_traffic(count)
    truth = dict(traffic_rows)
    labels = sorted({intent for _, intent in traffic_rows})

    def label(prompt: Prompt) -> str:
        # The article assumes a correct pre-scan; the scripted intent model answers the truth.
        return truth[prompt.user]

    with tempfile.TemporaryDirectory(prefix="chainkit-replies-") as tmp:
        store = ReplyStore(tmp)
        store.put("delivery_options", "Standard delivery takes 3-5 days; express is next day.")
        variants = {
            "single-llm": Pipeline(
                [
                    Generate(
                        model=ScriptedModel(
                            model_id="generic.powerful", reply="answer", usage=Usage(50, 50)
                        ),
                        max_tokens=50,
                        catalogue=catalogue,
                    )
                ],
                name="single-llm",
            ),
            "well-architected": Pipeline(
                [
                    IntentScan(
                        classifier=LLMClassifier(
                            ScriptedModel(
                                model_id="generic.intent", reply=label, usage=Usage(15, 5)
                            ),
                            labels,
                        ),
                        catalogue=catalogue,
                    ),
                    Canned(replies={"greeting": CANNED["greeting"]}),
                    Precomputed(store=store, keys={"delivery_options": ()}),
                    Generate(
                        model=ScriptedModel(
                            model_id="generic.responder", reply="answer", usage=Usage(25, 25)
                        ),
                        max_tokens=25,
                        catalogue=catalogue,
                    ),
                ],
                name="well-architected",
            ),
        }
        for name, pipeline in variants.items():
            requests = [
                Request(text, id=f"{name}:{i:05d}", tags={"variant": name})
                for i, (text, _) in enumerate(traffic_rows)
            ]
            pipeline.run_batch(requests, ledger, concurrency=4, resume=RESUME if resume else False)
        store.close()
    report = Report.from_ledger(ledger, variants=list(variants), traffic_per_day=traffic)
    single, smart = report.variants
    wa_entries = [e for e in ledger.entries() if e.tags.get("variant") == "well-architected"]
    article = _article_monthly(wa_entries, traffic)
    assert single.monthly_cost is not None and smart.monthly_cost is not None
    article_savings = (single.monthly_cost - article) / single.monthly_cost * 100
    notes = (
        f"As run: single-llm {usd(single.monthly_cost)}/month, well-architected "
        f"{usd(smart.monthly_cost)}/month at {traffic:,} interactions a day: "
        f"{smart.savings_pct}% saved.",
        f"The article's {usd(article)}/month ({article_savings:.1f}%) leaves out the pre-scan "
        "of the interactions answered by canned and precomputed replies; every interaction is "
        f"pre-scanned, which adds {usd(smart.monthly_cost - article)}/month.",
    )
    return Report(
        report.variants,
        traffic_per_day=traffic,
        assumptions={
            "scenario": "seed",
            "catalogue": catalogue.name,
            "requests_run": count,
            "tokens_per_interaction": {"powerful": 100, "intent": 20, "responder": 50},
            "deflected_share": "0.5",
            "token_counts": "scripted to the article's figures",
            "article_monthly_usd": money(article),
            "article_savings_pct": f"{article_savings:.1f}",
        },
        notes=notes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recipe from the command line; return the exit status (2: a bad argument)."""
    parser = recipe_parser("python -m recipes.chatbot", __doc__)
    parser.add_argument(
        "--scenario",
        choices=["demo", "seed", "data"],
        default=None,
        help="demo: shipped sample traffic (default); seed: the article's figures; data: real "
        "traffic from --data-dir (the default when --data-dir is given)",
    )
    parser.add_argument(
        "--data-dir",
        type=folder,
        default=None,
        help="folder with bitext_customer_support/ and clinc150/",
    )
    parser.add_argument(
        "--small-talk",
        type=share,
        default=0.12,
        help="data: share of traffic that is greetings, thanks and goodbyes (CLINC150 test)",
    )
    parser.add_argument(
        "--out-of-scope",
        type=share,
        default=0.15,
        help="data: share of traffic that is out of scope (CLINC150 oos test)",
    )
    parser.add_argument(
        "--precompute",
        choices=["reference", "model"],
        default="reference",
        help="data: fill precomputed replies from Bitext's reference replies, or have the small "
        "model write them (one-off spend, shown as setup)",
    )
    parser.add_argument(
        "--cascade-below",
        type=share,
        default=0.5,
        help="data: the cascade asks the LLM when the local classifier's confidence is below this",
    )
    parser.add_argument(
        "--limit", type=count, default=None, help="data: run only the first N messages"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="save a cost and deflection plot here"
    )
    parser.add_argument("--traffic", type=count, default=10_000, help="interactions per day")
    parser.add_argument(
        "--requests",
        type=count,
        default=1_000,
        help="seed: interactions to run through the pipelines",
    )
    add_provider_options(parser)
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.scenario is None:
        args.scenario = "data" if args.data_dir is not None else "demo"
    if args.scenario == "data" and args.data_dir is None:
        parser.error("the data scenario needs --data-dir (e.g. --data-dir ../shared/data)")
    if args.scenario == "seed" and args.provider != "offline":
        parser.error(
            "the seed scenario reproduces the article's hypothetical models with scripted token "
            "counts; run --provider bedrock with the demo scenario (the default)"
        )
    return run_command(lambda: _run(args), prog=parser.prog, debug=getattr(args, "debug", False))


def _run(args: argparse.Namespace) -> int:
    if args.provider == "bedrock":
        check_bedrock(args.region)  # before a ledger file is written or anything is paid
    ledger = open_ledger(args.ledger, resume=args.resume)
    try:
        if args.scenario == "seed":
            report = run_seed(ledger, args.traffic, args.requests, resume=args.resume)
        elif args.scenario == "data":
            # Imported here: the data scenario needs scikit-learn, the others do not.
            from recipes import support_bot

            report = support_bot.run(
                args.data_dir,
                ledger,
                args.traffic,
                provider=args.provider,
                region=args.region,
                small_talk=args.small_talk,
                out_of_scope=args.out_of_scope,
                precompute_with=args.precompute,
                cascade_below=args.cascade_below,
                limit=args.limit,
                resume=args.resume,
            )
        else:
            report = run_demo(
                ledger,
                args.traffic,
                provider=args.provider,
                region=args.region,
                resume=args.resume,
            )
    finally:
        if isinstance(ledger, SQLLedger):
            ledger.close()
    print(render(report, args.format))
    if args.plot is not None:
        from chainkit.plots import plot_report

        plot_report(report, args.plot)
        print(f"plot saved to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
