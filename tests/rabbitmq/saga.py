"""The order saga that the multi-process tests run: worker processes and the test share it.

``OrderPlaced`` starts an order that expects ``items`` items. Each ``ItemAdded`` adds its item
once (a message delivered again adds nothing: the handler is idempotent, as a user would
write it) and appends the message's id to ``applied`` every time, the raw record of each
save the handler made: an id there twice is a duplicate effect, which busflow's exactly-once
effects (issue 9) rule out and at-least-once delivery alone does not. The save that adds
the last item completes the order and publishes ``OrderCompleted``, which a plain handler
counts in the ``completions`` collection: an order with no count lost an outgoing message.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from busflow import (
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)

COMPLETIONS = "completions"
"""The collection where the completion handler counts each order's ``OrderCompleted``."""


class OrderPlaced(Message):
    message_name = "busflow-test.OrderPlaced"
    partition_by = "order_id"
    order_id: str
    items: int


class ItemAdded(Message):
    message_name = "busflow-test.ItemAdded"
    partition_by = "order_id"
    order_id: str
    item: str


class OrderCompleted(Message):
    message_name = "busflow-test.OrderCompleted"
    partition_by = "order_id"
    order_id: str


class OrderState(WorkflowState):
    workflow_name = "rabbitmq-test/order"

    order_id: str = ""
    expected: int = 0
    items: list[str] = Field(default_factory=list)
    applied: list[str] = Field(default_factory=list)


BY_ORDER: MessageWorkflowMapping[Any, OrderState] = MessageWorkflowMapping(
    lookup=lambda message, _attributes: message.order_id, maps_to="order_id"
)


class OrderWorkflow(Workflow[OrderState]):
    def configure_workflow(self, mapper: WorkflowMapper[OrderState]) -> None:
        mapper.with_state(OrderState).started_by(OrderPlaced, self.placed).when(
            ItemAdded, self.item_added, BY_ORDER
        )

    async def placed(
        self, message: OrderPlaced, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id, "expected": message.items}

    async def item_added(
        self, message: ItemAdded, state: OrderState, attributes: MessageAttributes
    ) -> dict[str, Any]:
        applied = [*state.applied, attributes.message_id or "?"]
        if message.item in state.items:
            return {"applied": applied}
        items = [*state.items, message.item]
        if len(items) < state.expected:
            return {"items": items, "applied": applied}
        await self.bus.publish(OrderCompleted(order_id=state.order_id))
        return self.complete_workflow(items=items, applied=applied)
