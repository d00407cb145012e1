"""sdd.store: the durable history (SQLite, WAL, group commit). Re-exports only; see store.py."""

from .errors import SchemaError, StoreClosed, StoreError, StoreValueError, UnsafePath
from .records import AddedDetection, DetectionState, ExclusionKind, Page, RunTrigger, WriterStats
from .schema import SCHEMA_VERSION
from .store import Store

__all__ = [
           "SCHEMA_VERSION",
           "AddedDetection",
           "DetectionState",
           "ExclusionKind",
           "Page",
           "RunTrigger",
           "SchemaError",
           "Store",
           "StoreClosed",
           "StoreError",
           "StoreValueError",
           "UnsafePath",
           "WriterStats",
]
