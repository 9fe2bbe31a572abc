"""The MongoDB-protocol store for tests, benchmarks and the demo.

In order of preference: the server named by `MONGODB_URI`; a private `mongod` if one is on PATH; a
private FerretDB (pinned version, SQLite backend) built by `taskq_dev.tools.ferretdb_binary()`.
A private server listens on a free loopback port and keeps its data in one folder, so `stop()` then
`start()` brings the same data back on the same port. Called by `taskq_dev.services`.

FerretDB 1.24.2 (SQLite) limits, measured here: one `update` command with 100 or more statements
hangs the server for good (each statement keeps a pooled connection until the command ends; the pool
has 100), so bulk writes must go in chunks of at most 99; only a filter that is exactly `{_id: ...}`
is pushed down to SQLite, so a guarded `{_id, state: {$in: ...}}` update scans the collection; and
every write command (update, delete, findAndModify) scans the collection even by `_id`: FerretDB
indexes `_ferretdb_sjson->"_id"` but its write path filters on `_ferretdb_sjson->'$._id'`, which the
SQLite planner does not match to that index. `PrivateMongo.index_writes` adds an index on the
expression the writes use (an update at 20k documents: 54 ms -> 1.3 ms); the benchmark and the demo
call it, so they measure taskq rather than this FerretDB bug. MongoDB needs none of this.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors

from taskq.errors import redact_url
from taskq_dev import ports, tools
from taskq_dev.processes import BackgroundProcess
from taskq_dev.service_base import ServiceError

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def ping(uri: str, timeout: float = 2.0) -> bool:
    """Whether the server at `uri` answers a `ping` now."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000)
    )
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()
    return True


class ExternalMongo:
    """A store named by the environment; the harness never stops or deletes it."""

    kind = "external"

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @property
    def external(self) -> bool:
        return True

    def start(self) -> float:
        raise ServiceError(f"cannot start the external store {redact_url(self.uri)}")

    def stop(self) -> None:
        raise ServiceError(f"cannot stop the external store {redact_url(self.uri)}")

    def close(self) -> None:
        """Nothing to do: the store belongs to whoever set `MONGODB_URI`."""

    def index_writes(self, database: str) -> int:
        """Nothing to do: an external store is what it is."""
        return 0


@dataclass(frozen=True)
class StoreLayout:
    """Which server, where its data lives and its port (saved by `taskq-dev services`)."""

    kind: str  # "mongod" or "ferretdb"
    binary: Path
    base_dir: Path
    port: int

    def argv(self) -> list[str]:
        data = self.base_dir / "data"
        listen = f"{ports.LOOPBACK}:{self.port}"
        if self.kind == "mongod":
            return [
                str(self.binary),
                f"--dbpath={data}",
                f"--bind_ip={ports.LOOPBACK}",
                f"--port={self.port}",
                "--nounixsocket",
                "--quiet",
            ]
        return [
            str(self.binary),
            "--handler=sqlite",
            # WAL without an fsync per commit: survives a crash of the server, like MongoDB's
            # default write concern (no journal wait); FerretDB adds WAL and busy_timeout itself
            f"--sqlite-url=file:{data}/?_pragma=synchronous(normal)",
            f"--listen-addr={listen}",
            f"--state-dir={self.base_dir}",
            "--debug-addr=-",  # no debug HTTP listener (it would take port 8088)
            "--telemetry=disable",
            "--log-level=warn",
        ]

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "binary": str(self.binary), "base_dir": str(self.base_dir), "port": self.port}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StoreLayout:
        return cls(
            kind=str(record["kind"]),
            binary=Path(record["binary"]),
            base_dir=Path(record["base_dir"]),
            port=int(record["port"]),
        )


def choose_layout(base_dir: Path) -> StoreLayout:
    """`mongod` from PATH if there is one, else FerretDB (built on first use), on a free port."""
    mongod = shutil.which("mongod")
    if mongod is not None:
        return StoreLayout(kind="mongod", binary=Path(mongod), base_dir=base_dir, port=ports.free_port())
    return StoreLayout(
        kind="ferretdb", binary=tools.ferretdb_binary(), base_dir=base_dir, port=ports.free_port()
    )


class PrivateMongo:
    """A `mongod` or FerretDB the harness runs itself; `stop`/`start` keep its data and port."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self.kind = layout.kind
        self.uri = f"mongodb://{ports.LOOPBACK}:{layout.port}/"
        self.process = BackgroundProcess(
            argv=layout.argv(),
            log_path=layout.base_dir / f"{layout.kind}.log",
            cwd=layout.base_dir,
        )

    @property
    def external(self) -> bool:
        return False

    def index_writes(self, database: str) -> int:
        """On FerretDB, index every collection of `database` on the `_id` expression its writes use.

        Run it after the collections exist (FerretDB makes a table per collection on first use);
        idempotent. Returns how many tables were indexed; 0 for `mongod`, whose `_id` index serves.
        """
        path = self.layout.base_dir / "data" / f"{database}.sqlite"
        if self.kind != "ferretdb" or not path.exists():
            return 0
        with closing(sqlite3.connect(path, timeout=30)) as db:
            tables = [row[0] for row in db.execute("SELECT table_name FROM _ferretdb_collections")]
            for table in tables:
                db.execute(f"CREATE INDEX IF NOT EXISTS \"{table}_taskq_id_path\" ON \"{table}\" (_ferretdb_sjson->'$._id')")
            db.commit()
        return len(tables)

    def _exited(self) -> str | None:
        if self.process.alive():
            return None
        return f"{self.kind} exited; log tail:\n{self.process.log_tail()}"

    def start(self) -> float:
        """Start the server and wait until it answers `ping`; return seconds taken."""
        if self.process.alive():
            return 0.0
        if not ports.port_is_free(self.layout.port):
            raise ServiceError(f"port {self.layout.port} of the private {self.kind} is taken")
        (self.layout.base_dir / "data").mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.process.start()
        try:
            ports.wait_until(
                lambda: ping(self.uri, timeout=1.0),
                timeout=STARTUP_TIMEOUT,
                what=f"{self.kind} on port {self.layout.port} to answer ping",
                interval=0.1,
                give_up=self._exited,
            )
        except ports.WaitTimeout as exc:
            self.stop()
            raise ServiceError(str(exc)) from exc
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a bounded wait); its data stays."""
        self.process.terminate(STOP_TIMEOUT)

    def close(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.layout.base_dir, ignore_errors=True)
