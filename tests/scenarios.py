"""Workflows and scenarios that the bus tests run on every persistence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from busflow import (
    Bus,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Persistence,
    Workflow,
    WorkflowMapper,
    WorkflowState,
    WorkflowStatus,
)

ITEMS_PER_ORDER = 5


class Lookup(Message):
    """A message that carries the value a test looks up."""

    value: Any = None


def by(field: str) -> MessageWorkflowMapping[Lookup, Any]:
    """A mapping from ``Lookup.value`` to ``field``."""
    return MessageWorkflowMapping(lookup=lambda message, _a: message.value, maps_to=field)


async def find(
    persistence: Persistence,
    state_type: type[Any],
    field: str,
    value: Any,
    *,
    include_completed: bool = False,
) -> list[Any]:
    """The states of ``state_type`` whose ``field`` equals ``value``."""
    return await persistence.get_workflow_state(
        state_type, by(field), Lookup(value=value), MessageAttributes(), include_completed
    )


class OrderPlaced(Message):
    order_id: str


class ItemAdded(Message):
    order_id: str
    item: str


class CartState(WorkflowState):
    workflow_name = "scenario/cart"

    order_id: str = ""
    items: list[str] = Field(default_factory=list)


BY_ORDER: MessageWorkflowMapping[Any, CartState] = MessageWorkflowMapping(
    lookup=lambda message, _attributes: message.order_id, maps_to="order_id"
)


class CartWorkflow(Workflow[CartState]):
    """Completes once it holds ITEMS_PER_ORDER distinct items: a lost update never completes."""

    def configure_workflow(self, mapper: WorkflowMapper[CartState]) -> None:
        mapper.with_state(CartState).started_by(OrderPlaced, self.placed).when(
            ItemAdded, self.item_added, BY_ORDER
        )

    async def placed(
        self, message: OrderPlaced, state: CartState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id}

    async def item_added(
        self, message: ItemAdded, state: CartState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        items = [*state.items, message.item]
        if len(items) == ITEMS_PER_ORDER:
            return self.complete_workflow(items=items)
        return {"items": items}


@dataclass
class ScenarioResult:
    complete: int
    lost: list[str]
    conflicts: int
    dead_letters: int


async def run_cart_race(bus: Bus, *, orders: int) -> ScenarioResult:
    """node-ts's workflow concurrency scenario: items for one order race each other."""
    for n in range(orders):
        await bus.publish(OrderPlaced(order_id=f"order-{n}"))
    await bus.wait_until_idle(timeout=60)
    for n in range(orders):
        for i in range(ITEMS_PER_ORDER):
            await bus.publish(ItemAdded(order_id=f"order-{n}", item=f"item-{i}"))
    await bus.wait_until_idle(timeout=120)
    return await check_carts(bus.persistence, orders=orders, bus=bus)


async def check_carts(persistence: Persistence, *, orders: int, bus: Bus) -> ScenarioResult:
    complete = 0
    lost: list[str] = []
    for n in range(orders):
        found = await persistence.get_workflow_state(
            CartState,
            BY_ORDER,
            ItemAdded(order_id=f"order-{n}", item=""),
            MessageAttributes(),
            True,
        )
        expected = {f"item-{i}" for i in range(ITEMS_PER_ORDER)}
        if (
            len(found) != 1
            or set(found[0].items) != expected
            or len(found[0].items) != len(expected)
        ):
            lost.append(f"order-{n}: {[state.items for state in found]}")
        elif found[0].workflow_status is WorkflowStatus.COMPLETE:
            complete += 1
    return ScenarioResult(complete, lost, bus.metrics.conflicts, len(bus.dead_letters))
