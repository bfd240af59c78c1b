"""The state cache on MongoPersistence: reads it saves, and the hazards it must not fall into.

Two buses on one database stand for two processes: each has its own cache, and the other one
moves workflows on behind its back.
"""

from __future__ import annotations

from typing import Any

from busflow import Bus, MessageAttributes
from busflow.mongodb import MongoPersistence
from tests.conftest import MongoBackend
from tests.counters import (
    BY_KEY,
    Bump,
    BumpTag,
    CounterState,
    CounterWorkflow,
    Finish,
    Report,
    Reported,
    Start,
    reporting_to,
)


def counter_bus(
    backend: MongoBackend, *, cache: int = 1_000, reports: list[Reported] | None = None
) -> Bus:
    persistence = MongoPersistence(
        client=backend.client, database=backend.database
    ).with_workflow_options(CounterState, unique_running=["key"])
    configuration = (
        Bus.configure()
        .with_persistence(persistence)
        .with_workflow(CounterWorkflow)
        .with_state_cache(cache)
    )
    return reporting_to(configuration, reports).build()


async def run(bus: Bus, *messages: Any) -> None:
    for message in messages:
        await bus.publish(message)
    await bus.wait_until_idle(timeout=10)


async def counters(bus: Bus, key: str) -> list[CounterState]:
    return await bus.find_workflows(CounterState, "key", key)


async def test_a_workflows_next_message_takes_its_state_from_the_cache_without_a_read(
    mongo_backend: MongoBackend,
) -> None:
    bus = counter_bus(mongo_backend)
    async with bus:
        await run(bus, Start(key="k"))
        commands = mongo_backend.commands
        before = list(commands.names) if commands else []
        for _ in range(3):
            await run(bus, Bump(key="k"))
        sent = commands.names[len(before) :] if commands else []
        [state] = await counters(bus, "k")

    assert state.count == 3
    assert bus.metrics.state_cache_hits == 3
    if commands is not None:  # mongomock has no command monitoring
        assert "find" not in sent  # (the timeout poller's findAndModify may come and go)


async def test_the_cache_keeps_only_as_many_states_as_it_is_given(
    mongo_backend: MongoBackend,
) -> None:
    bus = counter_bus(mongo_backend, cache=1)
    async with bus:
        await run(bus, Start(key="a"), Start(key="b"))
        await run(bus, Bump(key="a"))  # "a" was pushed out by "b": read
        await run(bus, Bump(key="a"))  # "a" is kept now

    assert bus.metrics.state_cache_hits == 1


async def test_a_handler_that_only_sends_from_a_stale_cached_state_runs_again_on_fresh_state(
    mongo_backend: MongoBackend,
) -> None:
    reports: list[Reported] = []
    here, elsewhere = counter_bus(mongo_backend, reports=reports), counter_bus(mongo_backend)
    async with here, elsewhere:
        await run(here, Start(key="k"))  # here keeps the state at count 0
        await run(elsewhere, Bump(key="k"))  # another process counts to 1
        await run(here, Report(key="k"))  # saves nothing, sends what it reads

    assert [report.count for report in reports] == [1]
    assert here.metrics.state_cache_hits == 1
    assert here.metrics.conflicts == 1


async def test_a_lookup_by_a_field_that_is_not_unique_is_never_answered_from_the_cache(
    mongo_backend: MongoBackend,
) -> None:
    here, elsewhere = counter_bus(mongo_backend), counter_bus(mongo_backend)
    async with here, elsewhere:
        await run(here, Start(key="k1", tag="t"))  # here keeps k1
        await run(elsewhere, Start(key="k2", tag="t"))  # another process starts k2, same tag
        await run(here, BumpTag(tag="t"))
        [one], [two] = await counters(here, "k1"), await counters(here, "k2")

    assert (one.count, two.count) == (100, 100)


async def test_a_unique_value_whose_cached_workflow_ended_elsewhere_reaches_its_successor(
    mongo_backend: MongoBackend,
) -> None:
    here, elsewhere = counter_bus(mongo_backend), counter_bus(mongo_backend)
    async with here, elsewhere:
        await run(here, Start(key="k"))  # here keeps the first workflow for "k"
        await run(elsewhere, Finish(key="k"), Start(key="k"))  # ended; a second one runs
        await run(here, Bump(key="k"))
        found = await here.find_workflows(CounterState, "key", "k")

    counts = sorted((state.workflow_status.value, state.count) for state in found)
    assert counts == [("complete", 0), ("running", 1)]
    assert here.metrics.unmatched == 0
    assert here.dead_letters == []


async def test_two_buses_sharing_workflows_lose_no_bump(mongo_backend: MongoBackend) -> None:
    one, two = counter_bus(mongo_backend), counter_bus(mongo_backend)
    keys = [f"k{n}" for n in range(10)]
    async with one, two:
        for key in keys:
            await one.publish(Start(key=key))
        await one.wait_until_idle(timeout=10)
        for round_ in range(6):
            for key in keys:
                await (one if round_ % 2 else two).publish(Bump(key=key))
        await one.wait_until_idle(timeout=30)
        await two.wait_until_idle(timeout=30)
        found = [await counters(one, key) for key in keys]

    assert [[state.count for state in states] for states in found] == [[6]] * len(keys)
    assert one.dead_letters == two.dead_letters == []


async def test_a_bus_without_a_state_cache_reads_each_time(mongo_backend: MongoBackend) -> None:
    bus = counter_bus(mongo_backend, cache=0)
    async with bus:
        await run(bus, Start(key="k"), Bump(key="k"))
        [state] = await bus.persistence.get_workflow_state(
            CounterState, BY_KEY, Bump(key="k"), MessageAttributes()
        )

    assert state.count == 1
    assert bus.metrics.state_cache_hits == 0
