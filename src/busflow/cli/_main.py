"""``busflow``: read-only commands for operators, and the demo.

    busflow inspect [--uri URI] [--database DB] [--outbox-age SECONDS] [--json]
        the workflow collections: counts by status, the oldest running workflow and its
        age, and the health of busflow's indexes
    busflow show [--uri URI] [--database DB] COLLECTION [--id ID | --where FIELD=VALUE]
                 [--status running|complete] [--older-than DURATION]
                 [--updated-before DATETIME] [--limit N] [--json]
        stored documents as relaxed Extended JSON; with --id, also the workflow's applied
        message ids and pending outgoing messages
    busflow demo [--uri URI] [--database DB] [--amqp URL]
        run the order saga example (``busflow.demo``)
    busflow dead-letters list --queue QUEUE [--amqp URL] [--limit N] [--traceback]
        an endpoint's dead letters on RabbitMQ (QUEUE.dead-letter), oldest first
    busflow dead-letters replay --queue QUEUE [--amqp URL] (--id ID | --all)
        send dead letters back to QUEUE, to be handled again

``--uri`` defaults to ``MONGODB_URI``, ``--amqp`` to ``AMQP_URL``. ``inspect`` and ``show``
never write. Every error is one line on standard error and a non-zero exit status; a
password in a connection string is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bson import json_util
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError

from busflow import WorkflowStatus
from busflow.cli._common import (
    PROGRAM,
    RELAXED_JSON,
    CommandError,
    CommandParser,
    add_demo_arguments,
    positive_seconds,
)
from busflow.cli._dead_letters import list_dead_letters, replay_dead_letters
from busflow.mongodb import (
    APPLIED_FIELD as APPLIED,
)
from busflow.mongodb import (
    OUTBOX_FIELD as OUTBOX,
)
from busflow.mongodb import (
    REGISTRY_COLLECTION,
    TIMEOUTS_COLLECTION,
    ExpectedIndex,
    hosts_of,
    mask_password,
    redact_uri,
)
from busflow.mongodb import (
    STATUS_FIELD as STATUS,
)
from busflow.mongodb import (
    UPDATED_AT_FIELD as UPDATED_AT,
)

__all__ = ["main"]

DEFAULT_DATABASE = "workflows"
"""``MongoPersistence``'s default database: used when neither ``--database`` nor the URI
names one."""

Document = dict[str, Any]
ID = "_id"


# Connecting


@dataclass(frozen=True)
class Server:
    """An open, read-only view of one database."""

    database: Database[Document]
    hosts: str


@contextlib.contextmanager
def connect(arguments: argparse.Namespace) -> Iterator[Server]:
    """Connect to ``--uri`` (or ``MONGODB_URI``) and check the server answers in time."""
    uri: str | None = arguments.uri or os.environ.get("MONGODB_URI")
    if not uri:
        raise CommandError(
            "no server given: pass --uri mongodb://HOST/ or set MONGODB_URI", exit_status=2
        )
    timeout_ms = int(arguments.timeout * 1000)
    try:
        client: MongoClient[Document] = MongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            tz_aware=True,
            uuidRepresentation="standard",
            appname="busflow-cli",
        )
    except (ConfigurationError, ValueError, TypeError) as error:  # the driver's own checks
        raise CommandError(f"bad connection string {redact_uri(uri)}: {error}", 2) from None
    hosts = hosts_of(uri)
    with client:
        try:
            client.admin.command("ping")
        except ConnectionFailure as error:
            raise CommandError(
                f"cannot reach MongoDB at {hosts} within {arguments.timeout:g} s "
                f"({_reason(error)}); check that the server runs and the address is right"
            ) from None
        except OperationFailure as error:
            raise CommandError(f"MongoDB at {hosts} refused: {_reason(error)}") from None
        name = arguments.database or _database_in(client) or DEFAULT_DATABASE
        yield Server(client[name], hosts)


def _database_in(client: MongoClient[Document]) -> str | None:
    with contextlib.suppress(ConfigurationError):
        return client.get_default_database().name
    return None


def _reason(error: PyMongoError) -> str:
    """The first, useful part of a driver error, without its topology dump."""
    if isinstance(error, OperationFailure) and error.details:
        text = str(error.details.get("errmsg") or error)
    else:
        text = str(error).split(" (configured timeouts", 1)[0].split(", Timeout:", 1)[0]
    return text.strip() or type(error).__name__


# inspect


def inspect(arguments: argparse.Namespace) -> int:
    """Print each workflow collection's counts, oldest running workflow and index health."""
    with connect(arguments) as server:
        database = server.database
        entries = list(database[REGISTRY_COLLECTION].find().sort(ID, 1))
        if not entries:
            raise CommandError(
                f"database {database.name!r} at {server.hosts} has no workflow collections: "
                f"{REGISTRY_COLLECTION} is empty or missing (a bus registers its workflows "
                "there when it starts); check --database"
            )
        existing = set(database.list_collection_names())
        now = datetime.now(UTC)
        timeouts = pending_timeouts(database, existing)
        reports: list[CollectionReport] = []
        for entry in entries:
            report = inspect_collection(
                database, entry, existing, now, timedelta(seconds=arguments.outbox_age)
            )
            waiting = timeouts.pop(entry.get("workflow_name"), None)
            report.lines.insert(2, describe_timeouts(waiting, now))
            count, due = waiting or (0, None)
            report.data["timeouts"] = {"pending": count, "next_due": due}
            reports.append(report)
    problems = sum(report.problems for report in reports)
    others = sum(count for count, _ in timeouts.values())
    if arguments.json:
        inspected = {
            "database": database.name,
            "hosts": server.hosts,
            "checked_at": now,
            "collections": [report.data | {"problems": report.problem_texts} for report in reports],
            "timeouts_from_outside": others,
            "problems": problems,
        }
        print(json_util.dumps(inspected, json_options=RELAXED_JSON))
        return 0
    print(
        f"database {database.name} at {server.hosts}: "
        f"{len(entries)} workflow collection(s), checked {now:%Y-%m-%d %H:%M:%S} UTC"
    )
    for report in reports:
        print()
        for line in report.lines:
            print(line)
    if others:
        print()
        print(f"{TIMEOUTS_COLLECTION}: {others} message(s) to deliver later, sent from outside")
    print()
    print(
        "no problems found"
        if not problems
        else f"{problems} problem(s) found; see the lines marked with !"
    )
    return 0


@dataclass
class CollectionReport:
    """What ``inspect`` found in one collection: lines for a person, data for ``--json``."""

    lines: list[str]
    problems: int = 0
    data: Document = dataclasses.field(default_factory=dict)

    @property
    def problem_texts(self) -> list[str]:
        """The problems, as the lines marked with ! say them."""
        return [
            line.strip().removeprefix("! ") for line in self.lines if line.lstrip().startswith("!")
        ]


def inspect_collection(
    database: Database[Document],
    entry: Mapping[str, Any],
    existing: set[str],
    now: datetime,
    outbox_age: timedelta,
) -> CollectionReport:
    """The report on one registered workflow collection."""
    problem = registry_entry_problem(entry)
    if problem is not None:
        return CollectionReport(
            data={"collection": entry.get(ID)},
            lines=[
                f"{entry.get(ID)!r}  (an entry of {REGISTRY_COLLECTION})",
                f"  ! busflow cannot read this entry: {problem}; fix or delete it "
                f"(db.{REGISTRY_COLLECTION}.deleteOne({{_id: {entry.get(ID)!r}}})), and the "
                "next bus start registers its workflow again",
            ],
            problems=1,
        )
    name = str(entry[ID])
    report = CollectionReport(
        [
            f"{name}  (workflow {entry.get('workflow_name', '?')}, "
            f"state {entry.get('state_type', '?')})"
        ],
        data={
            "collection": name,
            "workflow_name": entry.get("workflow_name"),
            "state_type": entry.get("state_type"),
            "exists": name in existing,
        },
    )
    if name not in existing:
        report.lines.append(
            f"  ! the collection does not exist (registered {_when(entry.get('registered_at'))})"
        )
        report.problems += 1
        return report
    collection = database[name]

    counts = {
        str(group[ID]): int(group["count"])
        for group in collection.aggregate([{"$group": {ID: f"${STATUS}", "count": {"$sum": 1}}}])
    }
    order = [status.value for status in (WorkflowStatus.RUNNING, WorkflowStatus.COMPLETE)]
    statuses = order + sorted(status for status in counts if status not in order)
    by_status = ", ".join(f"{counts.get(status, 0)} {status}" for status in statuses)
    report.lines.append(f"  workflows:      {by_status} ({sum(counts.values())} in all)")
    report.data["workflows"] = {status: counts.get(status, 0) for status in statuses}

    oldest = collection.find_one(
        {STATUS: WorkflowStatus.RUNNING.value}, sort=[(UPDATED_AT, 1), (ID, 1)]
    )
    report.data["oldest_running"] = None
    if oldest is None:
        report.lines.append("  oldest running: none")
    else:
        updated_at = oldest.get(UPDATED_AT)
        age = (now - updated_at) if isinstance(updated_at, datetime) else None
        described_age = (
            f"updated {_when(updated_at)}, {format_age(age)} ago"
            if age is not None
            else f"no {UPDATED_AT}"
        )
        lookups = {key: oldest[key] for key in _lookup_keys(entry) if key in oldest}
        looked_up = "".join(f" {key}={value!r}" for key, value in lookups.items())
        report.lines.append(f"  oldest running: {oldest[ID]}{looked_up}, {described_age}")
        report.data["oldest_running"] = {
            "workflow_id": oldest[ID],
            "lookups": lookups,
            "updated_at": updated_at if age is not None else None,
            "age_seconds": None if age is None else int(age.total_seconds()),
        }

    report.problems += report_waiting_outboxes(collection, now, outbox_age, report)

    index_lines, healthy, index_problems = check_indexes(
        collection.name, entry, collection.list_indexes()
    )
    report.lines += index_lines
    report.problems += index_problems
    report.data["indexes_ok"] = healthy
    return report


def pending_timeouts(
    database: Database[Document], existing: set[str]
) -> dict[object, tuple[int, datetime | None]]:
    """Messages waiting in busflow_timeouts, by the workflow that asked: count, next due."""
    if TIMEOUTS_COLLECTION not in existing:
        return {}
    groups = database[TIMEOUTS_COLLECTION].aggregate(
        [{"$group": {ID: "$workflow_name", "count": {"$sum": 1}, "next": {"$min": "$due_at"}}}]
    )
    return {
        group[ID]: (
            int(group["count"]),
            group["next"] if isinstance(group.get("next"), datetime) else None,
        )
        for group in groups
    }


def describe_timeouts(waiting: tuple[int, datetime | None] | None, now: datetime) -> str:
    if waiting is None:
        return "  timeouts:       none pending"
    count, due = waiting
    if due is None:
        return f"  timeouts:       {count} pending"
    when = f"in {format_age(due - now)}" if due > now else f"{format_age(now - due)} overdue"
    return f"  timeouts:       {count} pending, the next due {_when(due)} ({when})"


def report_waiting_outboxes(
    collection: Collection[Document],
    now: datetime,
    outbox_age: timedelta,
    report: CollectionReport,
) -> int:
    """Report workflows whose saved outgoing messages waited longer than ``outbox_age``.

    A bus clears the messages it dispatched from a workflow's ``_outbox`` within a second. One
    still there long after it was saved was saved by a worker that died before it dispatched
    it, and waits for the message that sent it to be delivered again (or for another worker to
    rescue it when it next handles the workflow). Returns 1 if any wait.
    """
    saved_at = f"{OUTBOX}.saved_at"
    stale = {saved_at: {"$lt": now - outbox_age}}
    waiting = collection.count_documents(stale)
    report.data["outgoing_waiting"] = waiting
    if not waiting:
        report.lines.append(f"  outgoing:       none waiting longer than {format_age(outbox_age)}")
        return 0
    oldest = collection.find_one(stale, sort=[(saved_at, 1), (ID, 1)]) or {}
    times: list[datetime] = [
        when
        for record in oldest.get(OUTBOX) or []
        if isinstance(record, Mapping) and isinstance(when := record.get("saved_at"), datetime)
    ]
    since = format_age(now - min(times)) if times else "long"
    report.lines.append(
        f"  ! outgoing:     {waiting} workflow(s) hold outgoing messages saved longer than "
        f"{format_age(outbox_age)} ago and never cleared; the oldest, {oldest.get(ID)}, for "
        f"{since}. They leave when the message that sent them is delivered again, or when a "
        "worker next handles the workflow: check that its queue has a running worker"
    )
    return 1


def registry_entry_problem(entry: Mapping[str, Any]) -> str | None:
    """What keeps busflow from reading an entry of the registry (one edited by hand, say)."""
    if not isinstance(entry.get(ID), str) or not entry[ID]:
        return f"its {ID} is not a collection name"
    indexes = entry.get("indexes", [])
    if not isinstance(indexes, list) or not all(
        isinstance(index, Mapping)
        and isinstance(index.get("name"), str)
        and isinstance(index.get("key"), Mapping)
        for index in indexes
    ):
        return "its indexes are not a list of documents, each with a name and a key"
    fields = entry.get("fields", {})
    if not isinstance(fields, Mapping) or not all(
        isinstance(name, str) and isinstance(key, str) for name, key in fields.items()
    ):
        return "its fields are not a document of field names and stored keys"
    return None


def _lookup_keys(entry: Mapping[str, Any]) -> list[str]:
    """The stored keys that busflow's indexes cover, such as ``order_id``: what finds a workflow."""
    keys: list[str] = []
    for described in entry.get("indexes") or []:
        if not isinstance(described, Mapping):
            continue
        for key in map(str, dict(described.get("key") or {})):
            if not key.startswith("_") and key not in keys:
                keys.append(key)
    return keys


def check_indexes(
    collection: str, entry: Mapping[str, Any], listed_indexes: Iterator[Mapping[str, Any]]
) -> tuple[list[str], list[str], int]:
    """Compare the indexes busflow expects (from the registry) with those the server lists:
    the lines to print, the healthy indexes, and the number of problems."""
    listed = {str(index["name"]): dict(index) for index in listed_indexes}
    healthy: list[str] = []
    problems: list[str] = []
    for described in entry.get("indexes") or []:
        try:
            expected = ExpectedIndex.from_description(dict(described))
        except (KeyError, TypeError, ValueError):
            problems.append(f"    ! the registry lists an index busflow cannot read: {described}")
            continue
        found = listed.get(expected.name)
        if found is None:
            same = expected.same_spec_in(listed)
            if same is not None:
                healthy.append(f"{expected.name} (as {same})")
            else:
                problems.append(
                    f"    ! missing  {expected.name} {dict(expected.keys)}: the next bus start "
                    "creates it; until then lookups on it scan the collection"
                )
            continue
        differences = expected.differences(found)
        if differences:
            problems.append(
                f"    ! differs  {expected.name}: {'; '.join(differences)}; a bus will not "
                f'start until you drop it (db.{collection}.dropIndex("{expected.name}"))'
            )
        elif expected.expire_after_seconds != found.get("expireAfterSeconds"):
            problems.append(
                f"    ! differs  {expected.name}: expireAfterSeconds "
                f"{found.get('expireAfterSeconds')} instead of {expected.expire_after_seconds}; "
                "the next bus start changes it"
            )
        else:
            healthy.append(expected.name)
    if not problems:
        summary = f"ok: {', '.join(healthy)}" if healthy else "ok (busflow expects none)"
        return [f"  indexes:        {summary}"], healthy, 0
    lines = [f"  indexes:        {len(problems)} problem(s)", *problems]
    if healthy:
        lines.append(f"    ok: {', '.join(healthy)}")
    return lines, healthy, len(problems)


def format_age(age: timedelta) -> str:
    """``timedelta(minutes=3, seconds=12)`` reads ``3 min 12 s``."""
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "0 s (its clock is ahead of this one)"
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    shown = parts[:2]
    if len(shown) == 2 and shown[1][0] == 0:
        shown.pop()  # "1 min", not "1 min 0 s"
    return " ".join(f"{value} {unit}" for value, unit in shown)


def _when(value: object) -> str:
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    return "at an unknown time"


# show


def show(arguments: argparse.Namespace) -> int:
    """Print the documents of one collection that match, as relaxed Extended JSON."""
    with connect(arguments) as server:
        database = server.database
        name: str = arguments.collection
        entry = database[REGISTRY_COLLECTION].find_one({ID: name})
        if entry is None and name not in database.list_collection_names():
            known = [str(each[ID]) for each in database[REGISTRY_COLLECTION].find({}, {ID: 1})]
            raise CommandError(
                f"no collection {name!r} in database {database.name!r} at {server.hosts}; "
                f"its workflow collections are: {', '.join(sorted(known)) or 'none'}"
            )
        readable = entry is not None and registry_entry_problem(entry) is None
        stored_keys: Mapping[str, str] = entry.get("fields", {}) if entry and readable else {}
        query = build_query(arguments, stored_keys, datetime.now(UTC))
        collection = database[name]
        matching = collection.count_documents(query)
        cursor = collection.find(query).sort([(UPDATED_AT, -1), (ID, 1)]).limit(arguments.limit)
        documents = list(cursor)
    record = arguments.id is not None and len(documents) == 1
    if arguments.json:
        shown: Document = {
            "database": database.name,
            "collection": name,
            "matching": matching,
            "shown": len(documents),
            "filter": query,
            "documents": documents,
        }
        if record:
            shown |= {"applied": applied_ids(documents[0]), "outbox": pending(documents[0])}
        print(json_util.dumps(shown, json_options=RELAXED_JSON))
        return 0
    for document in documents:
        print(json_util.dumps(document, json_options=RELAXED_JSON, indent=2))
    if record:
        for line in describe_record(documents[0]):
            print(line)
    print(
        f"{len(documents)} of {matching} matching document(s) in {database.name}.{name}, most "
        f"recently updated first; filter {json_util.dumps(query, json_options=RELAXED_JSON)}"
        + (" (--where values are strings, compared as they are)" if not matching else ""),
        file=sys.stderr,
    )
    return 0


def applied_ids(document: Mapping[str, Any]) -> list[Any]:
    """The ids of the messages a workflow applied, oldest first (``_applied``)."""
    applied = document.get(APPLIED)
    return list(applied) if isinstance(applied, list) else []


def pending(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The outgoing messages a workflow saved and that are not cleared yet (``_outbox``)."""
    outbox = document.get(OUTBOX)
    if not isinstance(outbox, list):
        return []
    return [record for record in outbox if isinstance(record, Mapping)]


def describe_record(document: Mapping[str, Any]) -> list[str]:
    """What ``show --id`` prints after the document: its applied ids and pending messages."""
    applied = applied_ids(document)
    lines = [f"applied message ids ({len(applied)}, oldest first):"]
    lines += [f"  {message_id}" for message_id in applied] or ["  none"]
    waiting = pending(document)
    lines.append(f"pending outgoing messages ({len(waiting)}):")
    for record in waiting:
        details = [f"saved {_when(record.get('saved_at'))}"]
        if record.get("deliver_at") is not None:
            details.append(f"to deliver {_when(record.get('deliver_at'))}")
        if record.get("origin") is not None:
            details.append(f"sent while handling {record.get('origin')}")
        lines.append(f"  {record.get('message_id')}  {record.get('name')}  {', '.join(details)}")
    if not waiting:
        lines.append("  none")
    return lines


def build_query(
    arguments: argparse.Namespace, stored_keys: Mapping[str, str], now: datetime
) -> Document:
    """The filter for ``show``: every value is a plain string, compared with ``$eq``, and the
    age filters compare ``_updated_at`` with a time.

    A field may be given by its Python name (``workflow_id``, ``order_id``) or by its stored
    key (``_id``); the registry's ``fields`` maps one to the other.
    """
    conditions: list[Document] = []
    if arguments.id is not None:
        conditions.append({ID: {"$eq": arguments.id}})
    for field, value in arguments.where or []:
        conditions.append({stored_keys.get(field, field): {"$eq": value}})
    if arguments.status is not None:
        conditions.append({STATUS: {"$eq": arguments.status}})
    if arguments.older_than is not None:
        conditions.append({UPDATED_AT: {"$lt": now - arguments.older_than}})
    if arguments.updated_before is not None:
        conditions.append({UPDATED_AT: {"$lt": arguments.updated_before}})
    if not conditions:
        return {}
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _field_equals_value(text: str) -> tuple[str, str]:
    field, equals, value = text.partition("=")
    if not equals or not field:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE")
    if field.startswith("$") or "\x00" in field or any(not part for part in field.split(".")):
        raise argparse.ArgumentTypeError(f"{field!r} is not a field name")
    return field, value


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|min|m|s)")
_UNITS = {"d": 86_400, "h": 3_600, "min": 60, "m": 60, "s": 1}
MAX_AGE = timedelta(days=700_000)
"""The longest ``--older-than``: about 1,900 years, which still ends after the year 1."""


def _duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d12h``: days, hours, minutes (m or min) and seconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 90s, 15m, 2h or 1d12h"
        )
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds > MAX_AGE.total_seconds():
        raise argparse.ArgumentTypeError(f"{text!r} is longer than {MAX_AGE.days}d")
    return timedelta(seconds=seconds)


def _moment(text: str) -> datetime:
    """An ISO 8601 date and time, such as ``2026-11-26T10:00:00Z``; without a zone, UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date and time such as 2026-11-26T10:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


MAX_LIMIT = 2**31 - 1
"""The largest ``--limit``: a 32-bit integer, which every server takes as a find's limit."""


def _limit(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= number <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1 and {MAX_LIMIT}")
    return number


def demo(arguments: argparse.Namespace) -> int:
    """Run the order saga example."""
    from busflow.cli import _demo as order_saga  # imported here: only this command needs it

    return order_saga.run(arguments, program=f"{PROGRAM} demo")


# The parser


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog=PROGRAM,
        description="Look at busflow's workflow state in MongoDB (read-only), see and replay "
        "dead letters on RabbitMQ, or run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    server = CommandParser(add_help=False)
    server.add_argument(
        "--uri", help="MongoDB connection string (default: the MONGODB_URI environment variable)"
    )
    server.add_argument(
        "--database",
        help=f"database (default: the one in the URI, else {DEFAULT_DATABASE})",
    )
    server.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        help="seconds to wait for the server (default: 5)",
    )

    inspect_parser = commands.add_parser(
        "inspect",
        parents=[server],
        help="workflow collections: counts, oldest running workflow, index health",
        description="For each workflow collection in busflow_workflows: its workflows by "
        "status, its oldest running workflow and how long ago it changed, and whether "
        "busflow's indexes are there as expected.",
    )
    inspect_parser.add_argument(
        "--outbox-age",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="report outgoing messages saved longer ago than this and not dispatched (default: 60)",
    )
    inspect_parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (relaxed Extended JSON) instead of the report",
    )
    inspect_parser.set_defaults(command=inspect)

    show_parser = commands.add_parser(
        "show",
        parents=[server],
        help="stored documents as relaxed Extended JSON",
        description="Print the documents of a collection, most recently updated first. "
        "--where values are plain strings compared by equality, never query operators.",
    )
    show_parser.add_argument("collection", metavar="COLLECTION", help="e.g. demo_order")
    which = show_parser.add_mutually_exclusive_group()
    which.add_argument("--id", help="the workflow id (the document's _id)")
    which.add_argument(
        "--where",
        type=_field_equals_value,
        action="append",
        metavar="FIELD=VALUE",
        help="a field (Python name or stored key) equal to a string; repeat to combine",
    )
    show_parser.add_argument(
        "--status",
        choices=[WorkflowStatus.RUNNING.value, WorkflowStatus.COMPLETE.value],
        help="only workflows with this status",
    )
    show_parser.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only documents last updated longer ago than this, such as 90s, 15m, 2h or 1d12h",
    )
    show_parser.add_argument(
        "--updated-before",
        type=_moment,
        metavar="DATETIME",
        help="only documents last updated before this ISO 8601 time (UTC unless it says)",
    )
    show_parser.add_argument(
        "--limit", type=_limit, default=20, help="documents to print (default: 20)"
    )
    show_parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (relaxed Extended JSON): the documents, their count and "
        "the filter; with --id also 'applied' and 'outbox'",
    )
    show_parser.set_defaults(command=show)

    demo_parser = commands.add_parser(
        "demo",
        help="run the order saga example",
        description="Run the order saga example on --uri, MONGODB_URI or an embedded server.",
    )
    add_demo_arguments(demo_parser)
    demo_parser.set_defaults(command=demo)

    dead_letters = commands.add_parser(
        "dead-letters",
        help="an endpoint's dead letters on RabbitMQ: list them, or replay them",
        description="The messages that failed for good on an endpoint queue, kept in "
        "QUEUE.dead-letter with why in their headers.",
    )
    actions = dead_letters.add_subparsers(title="actions", metavar="ACTION", required=True)
    broker = CommandParser(add_help=False)
    broker.add_argument("--amqp", help="RabbitMQ URL (default: the AMQP_URL environment variable)")
    broker.add_argument(
        "--queue", required=True, help="the endpoint's queue, as given to RabbitMQTransport"
    )
    broker.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        help="seconds to wait for the broker (default: 5)",
    )
    list_parser = actions.add_parser(
        "list",
        parents=[broker],
        help="print the dead letters, oldest first (they stay where they are)",
        description="Print each dead letter: its id, name, attempts, the handler that failed "
        "and its error. Nothing is removed.",
    )
    list_parser.add_argument("--limit", type=_limit, help="print at most N")
    list_parser.add_argument(
        "--traceback", action="store_true", help="print each error's traceback too"
    )
    list_parser.set_defaults(command=list_dead_letters)
    replay_parser = actions.add_parser(
        "replay",
        parents=[broker],
        help="send dead letters back to the queue, to be handled again",
        description="Send a dead letter (--id) or all of them (--all) back to the endpoint "
        "queue as a first attempt. Each keeps its id and skips the handlers that had "
        "finished with it; it leaves the dead letters once the broker has its copy.",
    )
    which_letters = replay_parser.add_mutually_exclusive_group(required=True)
    which_letters.add_argument("--id", help="the message id of the dead letter to replay")
    which_letters.add_argument("--all", action="store_true", help="replay every dead letter")
    replay_parser.set_defaults(command=replay_dead_letters)
    return parser


def _version() -> str:
    try:
        return version("busflow")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``busflow`` console script; returns the exit status."""
    arguments = build_parser().parse_command_line(argv)
    command: Callable[[argparse.Namespace], int] = arguments.command
    uri: str | None = getattr(arguments, "uri", None) or os.environ.get("MONGODB_URI")
    amqp: str | None = getattr(arguments, "amqp", None) or os.environ.get("AMQP_URL")
    try:
        status = command(arguments)
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return status
    except CommandError as error:
        message, status = str(error), error.exit_status
    except PyMongoError as error:
        message, status = f"MongoDB failed: {_reason(error)} ({type(error).__name__})", 1
    except KeyboardInterrupt:
        message, status = "interrupted", 130
    except BrokenPipeError:
        # The reader went away (``busflow show ... | head``): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:  # a bug: still one line, never a traceback
        message = f"unexpected {type(error).__name__}: {error}; please report this as a bug"
        status = 1
    print(f"{PROGRAM}: {mask_password(mask_password(message, uri), amqp)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
