"""Workflow state in MongoDB: ``MongoPersistence``."""

from busflow.mongodb._persistence import MongoPersistence, WorkflowOptions, redact_uri

__all__ = ["MongoPersistence", "WorkflowOptions", "redact_uri"]
