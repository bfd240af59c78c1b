"""Workflow state in MongoDB: ``MongoPersistence``, and what operator tools need to read it."""

from typing import TYPE_CHECKING, Any

from busflow._uri import hosts_of, mask_password, redact_uri
from busflow._values import APPLIED as APPLIED_FIELD
from busflow._values import OUTBOX as OUTBOX_FIELD
from busflow._values import STATUS as STATUS_FIELD
from busflow._values import UPDATED_AT as UPDATED_AT_FIELD
from busflow.mongodb._persistence import (
    REGISTRY_COLLECTION,
    ExpectedIndex,
    MongoPersistence,
    WorkflowOptions,
)
from busflow.mongodb._timeouts import TIMEOUTS_COLLECTION

if TYPE_CHECKING:
    from busflow.mongodb._embedded import EmbeddedServer, embedded_server_available


def __getattr__(name: str) -> Any:
    # Imported on first use: ``python -m busflow.mongodb._embedded`` runs that module itself.
    if name in ("EmbeddedServer", "embedded_server_available"):
        from busflow.mongodb import _embedded

        return getattr(_embedded, name)
    raise AttributeError(f"module 'busflow.mongodb' has no attribute {name!r}")


__all__ = [
    "APPLIED_FIELD",
    "OUTBOX_FIELD",
    "REGISTRY_COLLECTION",
    "STATUS_FIELD",
    "TIMEOUTS_COLLECTION",
    "UPDATED_AT_FIELD",
    "EmbeddedServer",
    "ExpectedIndex",
    "MongoPersistence",
    "WorkflowOptions",
    "embedded_server_available",
    "hosts_of",
    "mask_password",
    "redact_uri",
]
