"""The README's quick start: a workflow registered at bus startup, run to completion."""

import asyncio
from typing import Any

from busflow import (
    Bus,
    Message,
    MessageAttributes,
    MessageWorkflowMapping,
    Workflow,
    WorkflowMapper,
    WorkflowState,
)


class OrderPlaced(Message):
    order_id: str


class OrderPaid(Message):
    order_id: str


class OrderState(WorkflowState):
    workflow_name = "shop/order"

    order_id: str = ""
    paid: bool = False


class OrderWorkflow(Workflow[OrderState]):
    def configure_workflow(self, mapper: WorkflowMapper[OrderState]) -> None:
        mapper.with_state(OrderState).started_by(OrderPlaced, self.placed).when(
            OrderPaid,
            self.paid,
            MessageWorkflowMapping(lookup=lambda message, _: message.order_id, maps_to="order_id"),
        )

    async def placed(
        self, message: OrderPlaced, state: OrderState, _: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id}

    async def paid(
        self, message: OrderPaid, state: OrderState, _: MessageAttributes
    ) -> dict[str, Any]:
        return self.complete_workflow(paid=True)


async def main() -> None:
    bus = Bus.configure().with_workflow(OrderWorkflow).build()  # in-memory persistence
    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_until_idle()
        await bus.publish(OrderPaid(order_id="o-1"))
        await bus.wait_until_idle()
        [state] = await bus.find_workflows(OrderState, "order_id", "o-1")
    print(state.model_dump_json())


if __name__ == "__main__":
    asyncio.run(main())
