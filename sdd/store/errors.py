"""Every error the store raises, in one small hierarchy callers can catch precisely."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error raised by sdd.store."""


class StoreClosed(StoreError):
    """The store was closed (or its writer thread died); no more writes are accepted."""


class StoreValueError(StoreError, ValueError):
    """A value given to the store is unusable (wrong type, too large, too deep); the message names the field."""


class SchemaError(StoreError):
    """The database file has a schema this version of sdd cannot use (newer, or a failed migration)."""


class UnsafePath(StoreError):
    """The database path (or its directory) is a symlink or not a regular file; the store refuses it."""


__all__ = ["SchemaError", "StoreClosed", "StoreError", "StoreValueError", "UnsafePath"]
