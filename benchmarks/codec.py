"""The CPU cost of turning a large state into a MongoDB document and back.

    .venv/bin/python benchmarks/codec.py [--quick] [--repetitions N] [--check]

The state is an insurance claim of 50 fields and about 130 kB of BSON, as ``MongoPersistence``
writes it: 11 ``str`` (one of 2 kB of text, one of non-ASCII notes), 6 ``int`` (one beyond 32
bits), 5 ``float``, 6 ``Decimal`` (one ``None``), 5 ``datetime`` (one ``None``), 3 ``UUID``,
3 ``bool`` (one ``None``), 4 lists of scalars (``str``, ``float``, ``UUID``, ``datetime``),
3 dicts (``dict[str, str]``, ``dict[str, int]`` and a nested ``dict[str, Any]``), 2 nested models
(an address, and a customer holding an address), 360 line items (a model of 9 fields: a
``UUID``, text, an ``int``, two ``Decimal``, a ``float``, a ``datetime`` and a list of tags)
and 150 history events (a model of 4 fields), plus 20 applied message ids, as the bus keeps
them. Its datetimes are in UTC to the millisecond, as a state read from MongoDB holds them.

Each repetition runs, in turn, busflow's save-side encoding (``StateLayout.to_document``:
the value rules, the size count and the read-back through the model), ``bson.encode`` of the
document it returns, ``bson.decode`` of those bytes with ``MongoPersistence``'s codec options
(``tz_aware=True``, standard UUIDs), and busflow's load-side decoding
(``StateLayout.from_document``) of the decoded document; interleaved, so that drift of the
machine hits all four alike. It prints the minimum and median of each in milliseconds with
the targets, then the speed of busflow's Decimal128 conversions beside bson's own, and as its
last line one JSON object with every figure. ``--check`` exits 1 if a median misses its
target. This is a script, never a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from pydantic import BaseModel, Field

from busflow import WorkflowState
from busflow.mongodb._decimal128 import from_decimal128, to_decimal128
from busflow.mongodb._documents import StateLayout

CODEC: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, uuid_representation=UuidRepresentation.STANDARD
)
"""The codec options of the client ``MongoPersistence`` builds from a URI."""
TARGETS_MS = {"encode": 9.0, "decode": 5.0}
LINE_ITEMS = 360
EVENTS = 150


class Address(BaseModel):
    name: str
    street: str
    city: str
    postal_code: str
    country: str


class Customer(BaseModel):
    customer_id: uuid.UUID
    name: str
    email: str
    since: datetime
    address: Address
    loyalty_points: int


class LineItem(BaseModel):
    line_id: uuid.UUID
    sku: str
    description: str
    quantity: int
    unit_price: Decimal
    discount: Decimal
    weight_kg: float
    added_at: datetime
    tags: list[str] = Field(default_factory=list)


class Event(BaseModel):
    at: datetime
    kind: str
    actor: str
    detail: str


class ClaimState(WorkflowState):
    """50 fields of the state's own, beside busflow's."""

    workflow_name = "bench/claim"

    claim_number: str
    policy_number: str
    customer_name: str
    customer_email: str
    phone: str
    currency: str
    channel: str
    assigned_to: str | None
    description: str
    internal_notes: str
    region: str
    line_count: int
    retry_count: int
    priority_level: int
    customer_since_year: int
    total_cents: int
    sequence: int
    risk_score: float
    latitude: float
    longitude: float
    exchange_rate: float
    fraud_probability: float
    claimed_amount: Decimal
    approved_amount: Decimal
    deductible: Decimal
    tax_rate: Decimal
    paid_amount: Decimal
    reserve: Decimal | None
    opened_at: datetime
    last_contact_at: datetime
    incident_at: datetime
    due_at: datetime
    closed_at: datetime | None
    claim_uuid: uuid.UUID
    customer_id: uuid.UUID
    adjuster_id: uuid.UUID
    is_priority: bool
    fraud_checked: bool
    tags: list[str]
    scores: list[float]
    document_ids: list[uuid.UUID]
    reminder_times: list[datetime]
    attributes: dict[str, str]
    counters: dict[str, int]
    metadata: dict[str, Any]
    address: Address
    customer: Customer
    line_items: list[LineItem]
    history: list[Event]
    approved: bool | None = None


WORDS = (
    "water",
    "damage",
    "kitchen",
    "ceiling",
    "plumber",
    "invoice",
    "estimate",
    "photo",
    "inspection",
    "adjuster",
    "policy",
    "coverage",
    "deductible",
    "repair",
    "contractor",
    "receipt",
    "approved",
    "pending",
    "review",
    "window",
    "roof",
    "storm",
)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _moment(rng: random.Random, start: datetime) -> datetime:
    return start + timedelta(milliseconds=rng.randrange(90 * 24 * 3600 * 1000))


def _money(rng: random.Random) -> Decimal:
    return Decimal(rng.randrange(1, 10_000_000)).scaleb(-2)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def claim_state(seed: int = 14) -> ClaimState:
    """The same 130 kB claim for a given seed."""
    rng = random.Random(seed)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    address = Address(
        name="Jürgen Müller",
        street="Hauptstraße 12",
        city="Köln",
        postal_code="50667",
        country="DE",
    )
    return ClaimState(
        workflow_id=f"claim-{_uuid(rng)}",
        workflow_version=41,
        workflow_applied=[str(_uuid(rng)) for _ in range(20)],
        claim_number="CLM-2025-004711",
        policy_number="POL-88-1234567",
        customer_name="Jürgen Müller",
        customer_email="juergen.mueller@example.com",
        phone="+49 221 1234567",
        currency="EUR",
        channel="web",
        assigned_to="adjuster-17",
        description=_text(rng, 300),
        internal_notes="Rückruf erbeten — Kunde bevorzugt E-Mail; Gutachter: Café Ölberg. " * 8,
        region="eu-west",
        line_count=LINE_ITEMS,
        retry_count=2,
        priority_level=3,
        customer_since_year=2011,
        total_cents=12_345_678_901,
        sequence=987_654,
        risk_score=0.3172,
        latitude=50.9375,
        longitude=6.9603,
        exchange_rate=1.0834,
        fraud_probability=0.0123,
        claimed_amount=Decimal("18450.00"),
        approved_amount=Decimal("17210.55"),
        deductible=Decimal("500.00"),
        tax_rate=Decimal("0.19"),
        paid_amount=Decimal("0.00"),
        reserve=None,
        opened_at=_moment(rng, start),
        last_contact_at=_moment(rng, start),
        incident_at=_moment(rng, start),
        due_at=_moment(rng, start),
        closed_at=None,
        claim_uuid=_uuid(rng),
        customer_id=_uuid(rng),
        adjuster_id=_uuid(rng),
        is_priority=True,
        fraud_checked=False,
        tags=[rng.choice(WORDS) for _ in range(30)],
        scores=[rng.random() for _ in range(100)],
        document_ids=[_uuid(rng) for _ in range(40)],
        reminder_times=[_moment(rng, start) for _ in range(20)],
        attributes={f"attribute_{n}": _text(rng, 3) for n in range(40)},
        counters={f"counter_{n}": rng.randrange(1000) for n in range(40)},
        metadata={
            "source": {"system": "portal", "version": "4.2.1", "build": 1234},
            "flags": [True, False, True],
            "limits": {"daily": 5000, "ratio": 0.75, "labels": ["a", "b", "c"]},
            "note": None,
        },
        address=address,
        customer=Customer(
            customer_id=_uuid(rng),
            name="Jürgen Müller",
            email="juergen.mueller@example.com",
            since=_moment(rng, start),
            address=address,
            loyalty_points=4200,
        ),
        line_items=[
            LineItem(
                line_id=_uuid(rng),
                sku=f"SKU-{rng.randrange(10**6):06d}",
                description=_text(rng, 6),
                quantity=rng.randrange(1, 20),
                unit_price=_money(rng),
                discount=Decimal(rng.randrange(0, 30)).scaleb(-2),
                weight_kg=rng.random() * 20,
                added_at=_moment(rng, start),
                tags=[rng.choice(WORDS) for _ in range(2)],
            )
            for _ in range(LINE_ITEMS)
        ],
        history=[
            Event(
                at=_moment(rng, start),
                kind=rng.choice(("note", "call", "email", "status")),
                actor=f"user-{rng.randrange(50)}",
                detail=_text(rng, 10),
            )
            for _ in range(EVENTS)
        ],
    )


def _time(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def measure_codec(repetitions: int) -> dict[str, dict[str, float]]:
    """Min and median milliseconds of each of the four conversions of the claim."""
    layout = StateLayout.of(ClaimState, "claims")
    state = claim_state()
    now = datetime.now(UTC)
    document = layout.to_document(state, version=42, now=now)
    encoded = bson.encode(document)
    decoded = bson.decode(encoded, codec_options=CODEC)
    loaded = layout.from_document(decoded)
    if loaded != state.model_copy(update={"workflow_version": 42}):
        raise AssertionError("the claim did not come back equal")
    state = loaded  # a state as a handler gets it: read from its document
    runs: dict[str, Callable[[], object]] = {
        "busflow encode": lambda: layout.to_document(state, version=42, now=now),
        "bson.encode": lambda: bson.encode(document),
        "bson.decode": lambda: bson.decode(encoded, codec_options=CODEC),
        "busflow decode": lambda: layout.from_document(decoded),
    }
    for run in runs.values():  # warm caches (pydantic's, busflow's) before timing
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    gc.collect()
    for _ in range(repetitions):
        for name, run in runs.items():
            times[name].append(_time(run))
    figures = {
        name: {"min_ms": min(each), "median_ms": statistics.median(each)}
        for name, each in times.items()
    }
    figures["document"] = {"bytes": len(encoded), "fields": len(ClaimState.model_fields) - 6}
    return figures


def sample_decimals(kind: str, count: int, seed: int = 128) -> list[Decimal]:
    """``money``: amounts such as the claim's (-99999.99 to 99999.99); ``any``: 1 to 34 digits
    with any exponent Decimal128 holds, most of which ``str`` writes with an exponent."""
    rng = random.Random(seed)
    values: list[Decimal] = []
    for _ in range(count):
        if kind == "money":
            values.append(_money(rng) * rng.choice((1, -1)))
        else:
            digits = rng.randint(1, 34)
            coefficient = rng.randrange(10 ** (digits - 1), 10**digits)
            exponent = rng.randint(-6176, 6111 - digits + 1)
            values.append(Decimal(f"{rng.choice('-+')}{coefficient}E{exponent}"))
    return values


def _convert_all(convert: Callable[[Any], object], values: list[Any]) -> list[object]:
    return [convert(value) for value in values]


def measure_decimal128(count: int, repetitions: int) -> dict[str, dict[str, float]]:
    """Nanoseconds per value of each Decimal128 conversion, bson's and busflow's, and how many
    times faster busflow's is (by medians)."""
    figures: dict[str, dict[str, float]] = {}
    for kind in ("money", "any"):
        decimals = sample_decimals(kind, count)
        stored = [Decimal128(value) for value in decimals]
        if [each.bid for each in map(to_decimal128, decimals)] != [each.bid for each in stored]:
            raise AssertionError("to_decimal128 differs from bson")
        if list(map(repr, map(from_decimal128, stored))) != [
            repr(each.to_decimal()) for each in stored
        ]:
            raise AssertionError("from_decimal128 differs from bson")
        conversions: dict[tuple[str, str], tuple[Callable[[Any], object], list[Any]]] = {
            ("Decimal -> Decimal128", "bson"): (Decimal128, decimals),
            ("Decimal -> Decimal128", "busflow"): (to_decimal128, decimals),
            ("Decimal128 -> Decimal", "bson"): (Decimal128.to_decimal, stored),
            ("Decimal128 -> Decimal", "busflow"): (from_decimal128, stored),
        }
        times: dict[tuple[str, str], list[float]] = {name: [] for name in conversions}
        for _ in range(repetitions):
            for name, (convert, values) in conversions.items():
                times[name].append(
                    _time(functools.partial(_convert_all, convert, values)) * 1e6 / count
                )
        for direction in ("Decimal -> Decimal128", "Decimal128 -> Decimal"):
            bson_ns = statistics.median(times[direction, "bson"])
            busflow_ns = statistics.median(times[direction, "busflow"])
            figures[f"{direction}, {kind}"] = {
                "bson_median_ns": bson_ns,
                "busflow_median_ns": busflow_ns,
                "bson_min_ns": min(times[direction, "bson"]),
                "busflow_min_ns": min(times[direction, "busflow"]),
                "speed_up": bson_ns / busflow_ns,
            }
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for CI")
    parser.add_argument("--repetitions", type=int, help="of each conversion (200; quick: 30)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    arguments = parser.parse_args(argv)
    repetitions = arguments.repetitions or (30 if arguments.quick else 200)
    codec = measure_codec(repetitions)
    decimals = measure_decimal128(
        2_000 if arguments.quick else 20_000, 5 if arguments.quick else 15
    )
    document = codec.pop("document")
    print(
        f"a {document['fields']:.0f}-field claim state, {document['bytes']:,.0f} bytes of BSON; "
        f"{repetitions} repetitions; CPython {platform.python_version()}, "
        f"{platform.machine()}, bson C extension: {bson.has_c()}"
    )
    print(f"{'conversion':<16} {'min ms':>8} {'median ms':>10} {'target ms':>10}")
    targets = {"busflow encode": TARGETS_MS["encode"], "busflow decode": TARGETS_MS["decode"]}
    for name, figures in codec.items():
        target = f"{targets[name]:.1f}" if name in targets else ""
        print(f"{name:<16} {figures['min_ms']:>8.2f} {figures['median_ms']:>10.2f} {target:>10}")
    print(
        f"{'Decimal128 conversion, values':<30} {'bson ns':>8} {'busflow ns':>11} {'speed-up':>9}"
    )
    for name, figures in decimals.items():
        print(
            f"{name:<30} {figures['bson_median_ns']:>8.0f} {figures['busflow_median_ns']:>11.0f} "
            f"{figures['speed_up']:>8.1f}x"
        )
    missed = [name for name, target in targets.items() if codec[name]["median_ms"] > target]
    print(
        json.dumps(
            {
                "document": document,
                "repetitions": repetitions,
                "codec_ms": {
                    name: {key: round(value, 3) for key, value in figures.items()}
                    for name, figures in codec.items()
                },
                "decimal128": {
                    name: {key: round(value, 1) for key, value in figures.items()}
                    for name, figures in decimals.items()
                },
                "targets_ms": targets,
                "targets_missed": missed,
            }
        )
    )
    return 1 if arguments.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
