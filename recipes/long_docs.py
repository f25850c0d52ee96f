"""Chained summarisation on real long documents: the variants, batch inference, quality.

Used by ``python -m recipes.summarisation --data-dir ../shared/data --dataset qmsum`` and by the
notebook. Any JSONL of ``{id, document, summary?}`` works; QMSum and ScisummNet are examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from chainkit import (
    Catalogue,
    ConfigError,
    Entry,
    Generate,
    Ledger,
    Pipeline,
    Report,
    Request,
    Result,
    Summarise,
)
from chainkit.documents import Document, count_document, load_documents
from chainkit.ledger import Hold
from chainkit.ledger.sql import SQLLedger
from chainkit.pipeline import ResumePoint, resume_point, with_progress
from chainkit.providers.bedrock_batch import BatchRecord, BedrockBatch, OfflineBatch, hold_records
from chainkit.providers.offline import OfflineModel
from chainkit.quality import rouge
from chainkit.records import fingerprint
from chainkit.stages.compress import Compress
from recipes.common import RESUME, make_model

DATASETS = {
    "qmsum": Path("qmsum") / "qmsum_meetings.jsonl",
    "scisummnet": Path("scisummnet") / "scisummnet_250.jsonl",
}
STRONG = "anthropic.claude-3-5-sonnet-20241022-v2:0"
SMALL = "anthropic.claude-3-haiku-20240307-v1:0"
SUMMARY_TOKENS = 500
REPORT_TOKENS = 1_000
COMPRESS_TO = 0.33
VARIANTS = ("lazy", "chained", "compressed-chained", "chained-batch")
ASK = (
    "Write a report of this document for readers who were not there: its purpose, what was "
    "decided or found, by whom, and what remains open."
)


@dataclass(frozen=True)
class Setup:
    """What the variants share: models, catalogue, the batch runner and the compression budget."""

    summariser: Any
    generator: Any
    catalogue: Catalogue
    compress_to: float
    batch: tuple[Any, Any] | None
    batch_note: str | None = None

    def summarise(self) -> Summarise:
        """The small model's stage, as every chained variant uses it (on demand or in batch)."""
        return Summarise(model=self.summariser, max_tokens=SUMMARY_TOKENS, catalogue=self.catalogue)

    def generate(self) -> Generate:
        """The strong model's stage, as every variant uses it (on demand or in batch)."""
        return Generate(model=self.generator, max_tokens=REPORT_TOKENS, catalogue=self.catalogue)


def pipelines(setup: Setup) -> dict[str, Pipeline]:
    """The three on-demand variants (the batch one runs as jobs, see :func:`run_batch_variant`)."""
    catalogue = setup.catalogue

    return {
        "lazy": Pipeline([setup.generate()], name="lazy"),
        "chained": Pipeline([setup.summarise(), setup.generate()], name="chained"),
        "compressed-chained": Pipeline(
            [
                Compress(
                    budget=setup.compress_to,
                    priced_as=setup.summariser.model_id,
                    catalogue=catalogue,
                ),
                setup.summarise(),
                setup.generate(),
            ],
            name="compressed-chained",
        ),
    }


def _record(
    ledger: Ledger,
    request: Request,
    index: int,
    entry: Entry,
    state: Request | Result,
    hold: Hold | None = None,
    point: ResumePoint | None = None,
) -> None:
    if isinstance(ledger, SQLLedger):
        with ledger.step(
            request.id,
            index,
            given=request.document,
            fingerprint=fingerprint(request) if point is None else point.fingerprint,
            claimed=point is not None,
        ) as save:
            ledger.record(entry, hold=hold)
            save(state)
    else:
        ledger.record(entry, hold=hold)


def _record_id(request_id: str) -> str:
    # Bedrock wants plain alphanumeric record ids: one per request, the same in every run.
    return "r" + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _record_digest(model_id: str, record: BatchRecord) -> str:
    """What a record asks of its model, so that a saved job's output is only reused for it."""
    body = json.dumps(
        [model_id, record.prompt.system, record.prompt.user, record.max_tokens], ensure_ascii=True
    )
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def _saved_jobs(text: str | None, key: str) -> list[dict[str, Any]]:
    """The jobs an earlier run submitted under ``key``: ARN and what each record asked."""
    if text is None:
        return []
    try:
        jobs = json.loads(text)
    except json.JSONDecodeError:
        jobs = None
    if not isinstance(jobs, list):
        raise ConfigError(
            f"The ledger's saved batch job {key!r} ({text[:60]!r}) was written by an older "
            "chainkit and does not say which requests it holds, so its output cannot be "
            "matched to them safely. Let that job finish and run into a new ledger."
        )
    return jobs


def run_batch_variant(
    setup: Setup, requests: Sequence[Request], ledger: Ledger, *, resume: bool, name: str
) -> list[Result]:
    """Chained summarisation as two batch jobs (summaries, then reports) at batch prices."""
    assert setup.batch is not None
    summarise_job, generate_job = setup.batch
    catalogue = setup.catalogue
    summarise, generate = setup.summarise(), setup.generate()
    states: dict[str, Request | Result] = {r.id: r for r in requests}
    stage_of: dict[str, int] = {r.id: -1 for r in requests}
    points: dict[str, ResumePoint] = {}
    if resume and isinstance(ledger, SQLLedger):
        for r in requests:
            point = points[r.id] = resume_point(r, ledger, RESUME)
            states[r.id], stage_of[r.id] = point.state, point.start - 1
    too_long = [
        r.id
        for r in requests
        if r.document
        and stage_of[r.id] < 0
        and summarise.model.estimate(
            summarise.prompt(r.document), max_tokens=SUMMARY_TOKENS
        ).input_tokens
        > summarise.room
    ]
    if too_long:
        raise ConfigError(
            f"{name}: {len(too_long)} documents exceed {summarise.model.model_id!r}'s context "
            f"window ({too_long[:3]}...); a batch job cannot map-reduce them. Choose a summariser "
            "with a longer context for the batch variant."
        )
    plan: list[tuple[Summarise | Generate, Any, int]] = [
        (summarise, summarise_job, SUMMARY_TOKENS),
        (generate, generate_job, REPORT_TOKENS),
    ]
    try:
        for index, (stage, job, max_tokens) in enumerate(plan):
            todo = [r for r in requests if stage_of[r.id] < index]
            if not todo:
                continue
            records = []
            record_ids = {r.id: _record_id(r.id) for r in requests}
            for r in todo:
                state = states[r.id]
                assert isinstance(state, Request)
                prompt = (
                    summarise.prompt(state.document or "") if index == 0 else generate.prompt(state)
                )
                records.append(BatchRecord(record_ids[r.id], prompt, max_tokens))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            job_name = f"{name}-{stage.name}-{stamp}"
            entry_ids = {record_ids[r.id]: f"batch:{name}:{stage.name}:{r.id}" for r in todo}
            hold_args = {
                "model_id": job.model_id,
                "catalogue": catalogue,
                "entry_ids": entry_ids,
                "request_ids": {record_ids[r.id]: r.id for r in todo},
                "stage": stage.name,
                "region": job.region,
            }
            if isinstance(job, BedrockBatch) and isinstance(ledger, SQLLedger):
                # A job already submitted by an interrupted run is waited for, not paid twice, for
                # exactly the records it holds (same request, same prompt); the holds it made are in
                # the ledger, to be settled by the entries below. Only the others go in a new job.
                key = f"{name}:{stage.name}"
                jobs = _saved_jobs(ledger.job(key), key) if resume else []
                request_of = {record_ids[r.id]: r.id for r in todo}
                asks = {
                    rec.record_id: [request_of[rec.record_id], _record_digest(job.model_id, rec)]
                    for rec in records
                }
                results: dict[str, Any] = {}
                holds: dict[str, Hold | None] = {}
                for saved in jobs:
                    reuse = [rec for rec in records if saved["records"].get(rec.record_id)
                             == asks[rec.record_id] and rec.record_id not in results]  # fmt: skip
                    if reuse:
                        holds.update({rec.record_id: ledger.hold(entry_ids[rec.record_id])
                                      for rec in reuse})  # fmt: skip
                        job.wait(saved["arn"])
                        results.update(job.results(saved["arn"], reuse))
                fresh = [rec for rec in records if rec.record_id not in results]
                if fresh:
                    holds.update(
                        hold_records(ledger, fresh, **hold_args)
                    )  # before anything is paid
                    arn = job.submit(fresh, job_name=job_name)
                    jobs.append({"arn": arn, "records": {r.record_id: asks[r.record_id]
                                                         for r in fresh}})  # fmt: skip
                    ledger.save_job(key, json.dumps(jobs))
                    job.wait(arn)
                    results.update(job.results(arn, fresh))
            else:
                holds = hold_records(ledger, records, **hold_args)
                results = job.run(records, job_name=job_name)
            try:
                _settle_results(ledger, name, stage, index, job, todo, states, stage_of, results,
                                holds, record_ids, catalogue, points)  # fmt: skip
            finally:
                for held in holds.values():  # records never recorded (a failure stopped the run)
                    ledger.release(held)
    finally:
        # This run lets go of the requests it claimed and did not answer: a rerun takes them up.
        if isinstance(ledger, SQLLedger):
            for rid, point in points.items():
                if point.owner and not isinstance(states[rid], Result):
                    ledger.unclaim(rid, point.owner)
    return [s for s in (states[r.id] for r in requests) if isinstance(s, Result)]


def _settle_results(
    ledger: Ledger,
    name: str,
    stage: Any,
    index: int,
    job: Any,
    todo: Sequence[Request],
    states: dict[str, Request | Result],
    stage_of: dict[str, int],
    results: Mapping[str, Any],
    holds: Mapping[str, Hold | None],
    record_ids: Mapping[str, str],
    catalogue: Catalogue,
    points: Mapping[str, ResumePoint],
) -> None:
    """Record each record's entry from the job's output, settling its hold."""
    for r in todo:
        outcome = results[record_ids[r.id]]
        state = states[r.id]
        assert isinstance(state, Request)
        held = holds.get(record_ids[r.id])
        if isinstance(outcome, Exception):
            ledger.record(
                Entry(
                    r.id,
                    stage.name,
                    "failed",
                    cost=None,
                    model=job.model_id,
                    tags=r.tags,
                    bound=None if held is None else held.amount,
                    id=f"batch:{name}:{stage.name}:{r.id}",
                ),
                hold=held,
            )
            raise outcome
        cost = catalogue.cost(job.model_id, outcome.usage, region=job.region, tier="batch")
        new_state: Request | Result = (
            dataclasses.replace(state, summary=outcome.text)
            if index == 0
            else Result(state, outcome.text, stage.name, job.model_id)
        )
        entry = Entry(
            request_id=r.id,
            stage=stage.name,
            outcome="passed" if index == 0 else "answered",
            cost=cost,
            model=job.model_id,
            usage=outcome.usage,
            estimated=outcome.estimated,
            attempts=1,
            tags={**r.tags, "tier": "batch"},
            bound=None if held is None else held.amount,
            # One id per record of a job: a resumed run that reads the job's output again
            # writes the same entries, which the ledger keeps once.
            id=f"batch:{name}:{stage.name}:{r.id}",
        )
        _record(ledger, r, index, entry, new_state, held, points.get(r.id))
        states[r.id], stage_of[r.id] = new_state, index


def dataset_path(data_dir: Path, dataset: str) -> Path:
    """The JSONL file of a data set: a name in :data:`DATASETS` (under ``data_dir``) or a path.

    A name that is neither a known data set nor an existing file is refused with the names.
    """
    if dataset in DATASETS:
        path = data_dir / DATASETS[dataset]
        if not path.is_file():
            raise ConfigError(
                f"No {dataset} data at {path}: --data-dir must be the folder that holds "
                f"{' and '.join(f'{name}/' for name in DATASETS)} (e.g. --data-dir ../shared/data)."
            )
        return path
    path = Path(dataset)
    if not path.is_file():
        looks_like_a_path = path.suffix or len(path.parts) > 1
        what = f"No file at {path}" if looks_like_a_path else f"Unknown dataset {dataset!r}"
        raise ConfigError(
            f"{what}: give {' or '.join(DATASETS)}, or the path of an existing JSONL file of "
            "{id, document, summary} lines."
        )
    return path


def documents(
    data_dir: Path, dataset: str, *, split: str | None, limit: int | None
) -> list[Document]:
    """The documents of a bundled data set name, or of any JSONL path."""
    path = dataset_path(data_dir, dataset)
    docs = load_documents(path, split=split, limit=limit)
    if not docs and split is not None:
        splits = sorted({d.split for d in load_documents(path) if d.split is not None})
        raise ConfigError(
            f"No documents of split {split!r} in {dataset!r}; its splits: "
            f"{', '.join(splits) or 'none (leave out --split)'}."
        )
    return docs


def make_setup(
    provider: str,
    region: str | None,
    *,
    summariser: str,
    generator: str,
    compress_to: float,
    batch_bucket: str | None = None,
    batch_role: str | None = None,
    latency_s: float = 0.0,
) -> Setup:
    """Models for the provider; the batch runner (simulated offline, real with Bedrock)."""
    catalogue = Catalogue.load()
    summariser_model = make_model(
        provider, summariser, region, output_tokens=SUMMARY_TOKENS, latency_s=latency_s
    )
    generator_model = make_model(
        provider, generator, region, output_tokens=REPORT_TOKENS, latency_s=latency_s
    )
    batch: tuple[Any, Any] | None = None
    unpriced = [
        m
        for m in (summariser, generator)
        if not any(p.tier == "batch" for p in catalogue.card(m).prices)
    ]
    if unpriced:
        note = (
            f"chained-batch skipped: {', '.join(unpriced)} has no batch price in {catalogue.name}."
        )
        return Setup(summariser_model, generator_model, catalogue, compress_to, None, note)
    if provider == "offline":
        assert isinstance(summariser_model, OfflineModel)
        assert isinstance(generator_model, OfflineModel)
        batch = (OfflineBatch(summariser_model), OfflineBatch(generator_model))
    elif batch_bucket and batch_role:
        import boto3

        def job(model_id: str) -> BedrockBatch:
            return BedrockBatch(
                model_id,
                bedrock=boto3.client("bedrock", region_name=region),
                s3=boto3.client("s3", region_name=region),
                bucket=batch_bucket,
                prefix="chainkit-batch",
                role_arn=batch_role,
                region=region,
            )

        batch = (job(summariser), job(generator))
    else:
        note = "chained-batch skipped: pass --batch-bucket and --batch-role to run it on Bedrock."
        return Setup(summariser_model, generator_model, catalogue, compress_to, None, note)
    return Setup(summariser_model, generator_model, catalogue, compress_to, batch)


def run(
    data_dir: Path,
    dataset: str,
    ledger: Ledger,
    *,
    provider: str = "offline",
    region: str | None = None,
    summariser: str = SMALL,
    generator: str = STRONG,
    compress_to: float = COMPRESS_TO,
    split: str | None = None,
    limit: int | None = None,
    resume: bool = False,
    concurrency: int = 4,
    progress: bool | None = None,
    batch_bucket: str | None = None,
    batch_role: str | None = None,
    latency_s: float = 0.0,
) -> tuple[Report, dict[str, list[tuple[int, float]]]]:
    """Run the variants on the same documents; return the report and (length, cost) points."""
    docs = documents(data_dir, dataset, split=split, limit=limit)
    if not docs:
        raise ConfigError(f"No documents in {dataset!r} (split={split!r}).")
    setup = make_setup(
        provider,
        region,
        summariser=summariser,
        generator=generator,
        compress_to=compress_to,
        batch_bucket=batch_bucket,
        batch_role=batch_role,
        latency_s=latency_s,
    )
    notes = [setup.batch_note] if setup.batch_note else []
    names = [n for n in VARIANTS if n != "chained-batch" or setup.batch is not None]
    results: dict[str, dict[str, Result]] = {}
    for name in names:
        requests = [
            Request(ASK, id=f"{name}:{d.id}", document=d.text, tags={"variant": name}) for d in docs
        ]
        if name == "chained-batch":
            outs = run_batch_variant(setup, requests, ledger, resume=resume, name=name)
        else:
            outs = pipelines(setup)[name].run_batch(
                requests,
                ledger,
                concurrency=concurrency,
                progress=progress,
                resume=RESUME if resume else False,
            )
        results[name] = {r.request.id: r for r in outs}
    report = Report.from_ledger(ledger, variants=names)
    return _with_quality(report, ledger.entries(), docs, results, setup, provider, dataset, notes)


def _with_quality(
    report: Report,
    entries: Sequence[Entry],
    docs: Sequence[Document],
    results: Mapping[str, Mapping[str, Result]],
    setup: Setup,
    provider: str,
    dataset: str,
    notes: list[str],
) -> tuple[Report, dict[str, list[tuple[int, float]]]]:
    summariser_id = setup.summariser.model_id
    sizes = {d.id: count_document(d, summariser_id).tokens for d in docs}
    # Scoring takes longer than the runs (stemming whole meetings): it reports its progress too.
    baseline = {
        d.id: rouge(d.text, d.summary, ("rouge1",))["rouge1_recall"]
        for d in with_progress(docs, "ROUGE-1 of the documents", unit="documents")
        if d.summary is not None
    }
    window = setup.catalogue.card(summariser_id).context_window
    points: dict[str, list[tuple[int, float]]] = {}
    scored = []
    for v in report.variants:
        outs = results.get(v.name, {})
        per_doc = [(d, outs[f"{v.name}:{d.id}"]) for d in docs if f"{v.name}:{d.id}" in outs]
        scores = [
            rouge(r.text, d.summary)
            for d, r in with_progress(per_doc, f"ROUGE of {v.name}", unit="documents")
            if d.summary is not None
        ]
        quality: dict[str, Any] = (
            {
                key: round(statistics.fmean(s[key] for s in scores), 4)
                for key in ("rouge1_recall", "rouge1_f", "rouge2_f", "rougeL_f")
            }
            if scores
            else {}
        )
        quality["summaries_from"] = (
            "offline stand-in (extractive)" if provider == "offline" else provider
        )
        if v.name == "compressed-chained":
            kept = [
                rouge(r.request.document or "", d.summary, ("rouge1",))["rouge1_recall"]
                / baseline[d.id]
                for d, r in per_doc
                if d.summary is not None and baseline[d.id] > 0
            ]
            if kept:
                quality["compress_rouge1_recall_kept"] = round(statistics.fmean(kept), 4)
                quality["compress_measured_on"] = "real (no model involved)"
        scored.append(dataclasses.replace(v, quality=quality))
    doc_costs: dict[str, dict[str, Decimal]] = {v.name: {} for v in report.variants}
    max_prompt = 0
    for e in entries:
        variant = e.tags.get("variant", "")
        if e.cost is not None and variant in doc_costs:
            doc_id = e.request_id.split(":", 1)[1]
            doc_costs[variant][doc_id] = doc_costs[variant].get(doc_id, Decimal(0)) + e.cost
        if e.model == summariser_id and e.usage is not None:
            max_prompt = max(max_prompt, e.usage.input_tokens + e.usage.cache_read_tokens)
    for name, costs in doc_costs.items():
        points[name] = [(sizes[doc_id], float(cost)) for doc_id, cost in costs.items()]
    stats = sorted(sizes.values())
    assumptions: dict[str, Any] = {
        "scenario": "data",
        "dataset": dataset,
        "documents": len(docs),
        "catalogue": setup.catalogue.name,
        "provider": provider,
        "summariser": summariser_id,
        "generator": setup.generator.model_id,
        "summary_tokens": SUMMARY_TOKENS,
        "report_tokens": REPORT_TOKENS,
        "compress_to": setup.compress_to,
        "document_tokens": {
            "counted_for": summariser_id,
            "estimated": count_document(docs[0], summariser_id).estimated,
            "median": int(statistics.median(stats)),
            "p90": stats[int(0.9 * (len(stats) - 1))],
            "max": stats[-1],
        },
        "summariser_context_window": window,
        "largest_summariser_prompt_tokens": max_prompt,
    }
    if provider == "offline":
        notes.append(
            "The offline model's summaries and reports are extractive stand-ins: their token "
            "counts are real, their ROUGE is the stand-in's. Compression figures are real."
        )
    return (
        Report(tuple(scored), assumptions=assumptions, notes=tuple(notes)),
        points,
    )
