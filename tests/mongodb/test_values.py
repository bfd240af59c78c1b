"""Property tests: kept values survive the trip to BSON and back, whatever the codec, and the
size busflow counts for the 16 MiB limit is the size of the document it writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from busflow import WorkflowStatus
from busflow._values import store_state
from busflow.mongodb._documents import StateLayout, decode_value, to_bson
from busflow.testing import Address, ContractValues, Priority

CODECS: dict[str, CodecOptions[Any]] = {
    "pymongo defaults": CodecOptions(),
    "tz-aware, standard uuids": CodecOptions(
        tz_aware=True, uuid_representation=UuidRepresentation.STANDARD
    ),
}

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
keys = texts.filter(lambda key: not key.startswith("$") and "." not in key and "\x00" not in key)
instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
decimals = st.decimals(
    allow_nan=False, allow_infinity=False, places=4, min_value=-(10**20), max_value=10**20
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    texts,
    instants,
    decimals,
    st.uuids(),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def through_bson(value: Any, codec: CodecOptions[Any]) -> Any:
    return bson.decode(bson.encode({"v": value}), codec_options=codec)["v"]


@settings(max_examples=200, deadline=None)
@given(value=values)
def test_any_kept_value_comes_back_equal_under_every_codec(value: Any) -> None:
    encoded = to_bson(value)
    for codec in CODECS.values():
        assert decode_value(through_bson(encoded, codec)) == value


@settings(max_examples=100, deadline=None)
@given(
    text=texts,
    count=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    at=st.none() | instants,
    day=st.none() | st.dates(),
    amount=st.none() | decimals,
    reference=st.none() | st.uuids(),
    priority=st.sampled_from(Priority),
    street=texts,
    labels=st.dictionaries(keys, values, max_size=3),
)
def test_a_state_comes_back_equal_from_its_document(
    text: str,
    count: int,
    at: datetime | None,
    day: Any,
    amount: Decimal | None,
    reference: uuid.UUID | None,
    priority: Priority,
    street: str,
    labels: dict[str, Any],
) -> None:
    layout = StateLayout.of(ContractValues, "busflow_contract_values")
    state = ContractValues(
        workflow_id="wf-1",
        workflow_version=3,
        text=text,
        count=count,
        at=at,
        day=day,
        amount=amount,
        reference=reference,
        priority=priority,
        address=Address(street=street),
        labels=labels,
    )

    document = layout.to_document(state, version=4, now=datetime.now(UTC))
    for codec in CODECS.values():
        loaded = layout.from_document(bson.decode(bson.encode(document), codec_options=codec))
        assert loaded == state.model_copy(update={"workflow_version": 4})


@settings(max_examples=200, deadline=None)
@given(
    workflow_id=texts,
    text=texts,
    count=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    numbers=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=25),
    at=st.none() | instants,
    labels=st.dictionaries(keys, values, max_size=3),
    complete=st.booleans(),
)
def test_the_size_counted_for_the_limit_is_the_size_of_the_document_written(
    workflow_id: str,
    text: str,
    count: int,
    numbers: list[int],
    at: datetime | None,
    labels: dict[str, Any],
    complete: bool,
) -> None:
    layout = StateLayout.of(ContractValues, "busflow_contract_values")
    state = ContractValues(
        workflow_id=workflow_id,
        workflow_status=WorkflowStatus.COMPLETE if complete else WorkflowStatus.RUNNING,
        text=text,
        count=count,
        numbers=numbers,
        at=at,
        labels=labels,
    )

    counted = store_state(state, version=7, where="busflow_contract_values").size
    document = layout.to_document(state, version=7, now=datetime.now(UTC))

    assert counted == len(bson.encode(document))
