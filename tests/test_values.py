"""The parts of ``busflow._values`` that the contract suite cannot see from outside."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from busflow import WorkflowState
from busflow._values import compares_plainly, lookup_key, store_state, stored_scalar
from busflow.testing import Priority


class Plain(WorkflowState):
    workflow_name = "values/plain"

    anything: str | int | float | Decimal | uuid.UUID | datetime | bytes | None = None
    flag: bool = False
    priority: Priority = Priority.LOW


instants = st.datetimes(timezones=st.just(UTC)).map(
    lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)
)
kept = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=3),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.decimals(places=1, min_value=-5, max_value=5),
    st.uuids(),
    instants,
    st.binary(max_size=2),
)


@given(stored=kept | st.none(), looked_up=kept | st.booleans())
def test_equality_finds_what_lookup_key_finds_where_it_is_used(stored: Any, looked_up: Any) -> None:
    value = stored_scalar(looked_up)
    if compares_plainly(Plain, "anything", value):
        assert (stored == value) == (lookup_key(stored) == lookup_key(value))


def test_bools_enums_and_bool_lookups_are_compared_through_lookup_key() -> None:
    assert compares_plainly(Plain, "anything", 1)
    assert not compares_plainly(Plain, "anything", True)
    assert not compares_plainly(Plain, "flag", 1)
    assert not compares_plainly(Plain, "priority", "low")


class Converted(WorkflowState):
    """Each field is converted on the way (so read back and compared), and holds a value that
    ``==`` alone would call changed."""

    workflow_name = "values/converted"

    moments: frozenset[datetime] = frozenset()
    pair: tuple[float, Priority] = (0.0, Priority.LOW)


def test_a_converted_value_counts_as_come_back_when_it_is_kept_as_the_rules_say() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678912, tzinfo=UTC)
    state = Converted(
        workflow_id="wf-1", moments=frozenset({moment}), pair=(math.nan, Priority.HIGH)
    )

    read_back = store_state(state, version=1, where="values_converted").read_back

    assert isinstance(read_back, Converted)
    assert read_back.moments == {moment.replace(microsecond=678000)}
    assert math.isnan(read_back.pair[0])
    assert read_back.pair[1] is Priority.HIGH
