"""The MongoDB-protocol status store (pymongo). Works on MongoDB and on FerretDB."""

from taskq.store.mongo import TaskStore

__all__ = ["TaskStore"]
