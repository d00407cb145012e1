"""The history's tests run on a real SQLite store in a temporary directory (the store tests' fixtures)."""

from tests.store.conftest import db_path, store

__all__ = ["db_path", "store"]
