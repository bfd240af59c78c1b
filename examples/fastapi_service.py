"""A FastAPI service that runs a workflow, and shows a workflow's state at a GET endpoint.

Run it with ``uvicorn fastapi_service:app`` from this folder (``pip install fastapi uvicorn``),
then ``curl -X POST localhost:8000/orders/o-1`` and ``curl localhost:8000/orders/o-1``.
The bus runs for as long as the app does; its persistence is in memory here, and would be a
``MongoPersistence`` in a real service.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException

from busflow import Bus, Message, MessageAttributes, Workflow, WorkflowMapper, WorkflowState

RECORD = {"workflow_applied", "workflow_outbox", "workflow_originator"}
"""busflow's record of what messages did and who started the workflow: not for clients."""


class OrderPlaced(Message):
    order_id: str


class OrderState(WorkflowState):
    workflow_name = "shop/order"

    order_id: str = ""


class OrderWorkflow(Workflow[OrderState]):
    def configure_workflow(self, mapper: WorkflowMapper[OrderState]) -> None:
        mapper.with_state(OrderState).started_by(OrderPlaced, self.placed)

    async def placed(
        self, message: OrderPlaced, state: OrderState, _: MessageAttributes
    ) -> dict[str, Any]:
        return {"order_id": message.order_id}


bus = Bus.configure().with_workflow(OrderWorkflow).build()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with bus:
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/orders/{order_id}", status_code=202)
async def place_order(order_id: str) -> dict[str, str]:
    await bus.publish(OrderPlaced(order_id=order_id))
    return {"order_id": order_id}


@app.get("/orders/{order_id}")
async def show_order(order_id: str) -> dict[str, Any]:
    """The order's workflow state: by a field of the state, with no message and no mapping."""
    found = await bus.find_workflows(OrderState, "order_id", order_id)
    if not found:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return found[0].model_dump(mode="json", exclude=RECORD)


@app.get("/workflows/{workflow_id}")
async def show_workflow(workflow_id: str) -> dict[str, Any]:
    """A workflow's state by its id, running or completed."""
    state = await bus.find_workflow(OrderState, workflow_id)
    if state is None:
        raise HTTPException(status_code=404, detail=f"no workflow {workflow_id}")
    return state.model_dump(mode="json", exclude=RECORD)
