"""Workflow state in MongoDB: ``MongoPersistence``, and what operator tools need to read it."""

from busflow._uri import hosts_of, mask_password, redact_uri
from busflow._values import OUTBOX as OUTBOX_FIELD
from busflow._values import STATUS as STATUS_FIELD
from busflow._values import UPDATED_AT as UPDATED_AT_FIELD
from busflow.mongodb._embedded import EmbeddedServer, embedded_server_available
from busflow.mongodb._persistence import (
    REGISTRY_COLLECTION,
    ExpectedIndex,
    MongoPersistence,
    WorkflowOptions,
)

__all__ = [
    "OUTBOX_FIELD",
    "REGISTRY_COLLECTION",
    "STATUS_FIELD",
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
