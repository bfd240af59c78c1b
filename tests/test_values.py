"""Where InMemoryPersistence compares lookups with ``==``, it finds what ``lookup_key`` finds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from busflow import WorkflowState
from busflow._values import compares_plainly, lookup_key, stored_scalar
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
