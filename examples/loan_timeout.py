"""A workflow that gives up: a loan whose credit check never answers is declined.

``python examples/loan_timeout.py`` applies for two loans. The credit bureau answers for the
first and never for the second. Each loan workflow asks for a timeout addressed to itself
when it starts; the first completes as approved before its timeout, which arrives later and is
ignored, and the second completes as declined when its timeout arrives. It prints each loan's
final state as JSON, one per line. Timeouts are stored by the persistence until due:
``InMemoryPersistence`` here, and the ``busflow_timeouts`` collection with ``MongoPersistence``.
"""

import asyncio
from datetime import timedelta
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

CREDIT_CHECK_TIMEOUT = timedelta(seconds=1)


class LoanApplied(Message):
    loan_id: str
    amount: int


class CreditCheckRequested(Message):
    loan_id: str


class CreditChecked(Message):
    loan_id: str
    score: int


class CreditCheckTimedOut(Message):
    loan_id: str


class LoanState(WorkflowState):
    workflow_name = "bank/loan"

    loan_id: str = ""
    amount: int = 0
    decision: str = "pending"


BY_LOAN: MessageWorkflowMapping[CreditChecked, LoanState] = MessageWorkflowMapping(
    lookup=lambda message, _: message.loan_id, maps_to="loan_id"
)


class LoanWorkflow(Workflow[LoanState]):
    def configure_workflow(self, mapper: WorkflowMapper[LoanState]) -> None:
        (
            mapper.with_state(LoanState)
            .started_by(LoanApplied, self.applied)
            .when(CreditChecked, self.checked, BY_LOAN)
            .when(CreditCheckTimedOut, self.timed_out)  # back by the sticky workflow_id
        )

    async def applied(
        self, message: LoanApplied, state: LoanState, _: MessageAttributes
    ) -> dict[str, Any]:
        await self.bus.send(CreditCheckRequested(loan_id=message.loan_id))
        await self.request_timeout(
            CreditCheckTimedOut(loan_id=message.loan_id), after=CREDIT_CHECK_TIMEOUT
        )
        return {"loan_id": message.loan_id, "amount": message.amount}

    async def checked(
        self, message: CreditChecked, state: LoanState, _: MessageAttributes
    ) -> dict[str, Any]:
        decision = "approved" if message.score >= 600 else "declined: low score"
        return self.complete_workflow(decision=decision)

    async def timed_out(
        self, message: CreditCheckTimedOut, state: LoanState, _: MessageAttributes
    ) -> dict[str, Any]:
        return self.complete_workflow(decision="declined: the credit check never answered")


async def main() -> None:
    async def credit_bureau(message: CreditCheckRequested, _: MessageAttributes) -> None:
        if message.loan_id == "loan-1":  # the bureau never answers for loan-2
            await bus.send(CreditChecked(loan_id=message.loan_id, score=720))

    bus = (
        Bus.configure()
        .with_workflow(LoanWorkflow)
        .with_handler(CreditCheckRequested, credit_bureau)
        .with_timeout_polling(interval=0.1, max_interval=0.5)
        .build()
    )
    async with bus:
        await bus.send(LoanApplied(loan_id="loan-1", amount=5_000))
        await bus.send(LoanApplied(loan_id="loan-2", amount=9_000))
        await bus.wait_until_idle(timeout=5)
        await asyncio.sleep(CREDIT_CHECK_TIMEOUT.total_seconds() + 0.5)
        await bus.wait_until_idle(timeout=5)
        for loan_id in ("loan-1", "loan-2"):
            [loan] = await bus.find_workflows(LoanState, "loan_id", loan_id)
            print(loan.model_dump_json(include={"loan_id", "decision", "workflow_status"}))
        print(f"timeouts ignored (their loan was complete): {bus.metrics.timeouts_ignored}")


if __name__ == "__main__":
    asyncio.run(main())
