"""RabbitMQ plus the MongoDB-protocol store, as one set, for pytest, benchmarks and the demo.

A `ServiceSet` owns one folder under `paths.state_dir("services")`, starts each service on first
request (or uses `AMQP_URL` / `RABBITMQ_MANAGEMENT_URL` / `MONGODB_URI` when set), and writes what
it started to `state.json` in that folder, so another command can stop it (`taskq-dev services
down`) and a later test session can stop what a killed one left behind (`sweep_orphans`). The
private broker's series (RabbitMQ 4.0 or 3.10) follows `TASKQ_TEST_RABBITMQ` (`taskq_dev.rabbitmq`).

Called by `tests/conftest.py` (one set per test session) and `taskq_dev.cli` (one detached set).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pymongo
import pymongo.errors

from taskq.errors import redact_url
from taskq_dev import chroot, paths
from taskq_dev.mongo import ExternalMongo, PrivateMongo, StoreLayout, choose_layout
from taskq_dev.processes import process_start_ticks
from taskq_dev.rabbitmq import ExternalRabbitMQ, PrivateRabbitMQ, RabbitNodeLayout, selected_series
from taskq_dev.service_base import ServiceError

RabbitMQService = ExternalRabbitMQ | PrivateRabbitMQ
MongoService = ExternalMongo | PrivateMongo

STATE_FILE = "state.json"
CLI_SET = "cli"


def rabbitmq_from_environment() -> ExternalRabbitMQ | None:
    """The broker named by `AMQP_URL` (and `RABBITMQ_MANAGEMENT_URL`), if set."""
    amqp_url = os.environ.get("AMQP_URL")
    if not amqp_url:
        return None
    return ExternalRabbitMQ(amqp_url, os.environ.get("RABBITMQ_MANAGEMENT_URL") or None)


def mongo_from_environment() -> ExternalMongo | None:
    """The store named by `MONGODB_URI`, if set."""
    uri = os.environ.get("MONGODB_URI")
    return ExternalMongo(uri) if uri else None


@dataclass
class ServiceSet:
    """The services of one test session or of `taskq-dev services up`, and the folder they live in."""

    base_dir: Path
    owner: dict[str, int | None] | None = None
    """The process whose exit makes this set an orphan; None for a detached set (the CLI's)."""
    rabbitmq: RabbitMQService | None = None
    mongo: MongoService | None = None
    startup_seconds: dict[str, float] = field(default_factory=dict)

    # ---- starting ----

    def ensure_rabbitmq(self) -> RabbitMQService:
        """The broker: from the environment, or a private node started now (once)."""
        if self.rabbitmq is None:
            external = rabbitmq_from_environment()
            if external is not None:
                self.rabbitmq = external
            else:
                node = PrivateRabbitMQ(RabbitNodeLayout.allocate(self.base_dir / "rabbitmq", selected_series()))
                self.rabbitmq = node
                self.save()  # before starting: a half-started node must still be found and stopped
                self.startup_seconds["rabbitmq"] = node.start()
            self.save()
        return self.rabbitmq

    def ensure_mongo(self) -> MongoService:
        """The store: from the environment, or a private mongod/FerretDB started now (once)."""
        if self.mongo is None:
            external = mongo_from_environment()
            if external is not None:
                self.mongo = external
            else:
                store = PrivateMongo(choose_layout(self.base_dir / "store"))
                self.mongo = store
                self.save()
                self.startup_seconds[store.kind] = store.start()
            self.save()
        return self.mongo

    def revive(self) -> None:
        """Start again any private server of this set that is not running (a test stopped it)."""
        for service in (self.rabbitmq, self.mongo):
            if isinstance(service, (PrivateRabbitMQ, PrivateMongo)) and not service.process.alive():
                service.start()
        self.save()

    # ---- stopping ----

    def close(self) -> None:
        """Stop every private server of this set and delete the set's folder (even after errors)."""
        errors: list[str] = []
        for service in (self.rabbitmq, self.mongo):
            if service is None:
                continue
            try:
                service.close()
            except (ServiceError, OSError) as exc:
                errors.append(str(exc))
        self.rabbitmq = None
        self.mongo = None
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise ServiceError("; ".join(errors))

    # ---- the state file ----

    def save(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"owner": self.owner, "startup_seconds": self.startup_seconds}
        if isinstance(self.rabbitmq, PrivateRabbitMQ):
            record["rabbitmq"] = {
                "layout": self.rabbitmq.layout.to_record(),
                "process": self.rabbitmq.process.record(),
            }
        elif isinstance(self.rabbitmq, ExternalRabbitMQ):
            record["rabbitmq"] = {"external": True}
        if isinstance(self.mongo, PrivateMongo):
            record["mongo"] = {"layout": self.mongo.layout.to_record(), "process": self.mongo.process.record()}
        elif isinstance(self.mongo, ExternalMongo):
            record["mongo"] = {"external": True}
        partial = self.base_dir / (STATE_FILE + ".partial")
        partial.write_text(json.dumps(record, indent=2))
        partial.replace(self.base_dir / STATE_FILE)

    @classmethod
    def load(cls, base_dir: Path) -> ServiceSet | None:
        """The set recorded in `base_dir`, with handles on its running processes; None if none."""
        try:
            record = json.loads((base_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        loaded = cls(base_dir=base_dir, owner=record.get("owner"))
        loaded.startup_seconds = dict(record.get("startup_seconds") or {})
        rabbit = record.get("rabbitmq") or {}
        if "layout" in rabbit:
            node = PrivateRabbitMQ(RabbitNodeLayout.from_record(rabbit["layout"]))
            node.process.adopt(rabbit["process"])
            loaded.rabbitmq = node
        elif rabbit.get("external"):
            loaded.rabbitmq = rabbitmq_from_environment()
        store = record.get("mongo") or {}
        if "layout" in store:
            private = PrivateMongo(StoreLayout.from_record(store["layout"]))
            private.process.adopt(store["process"])
            loaded.mongo = private
        elif store.get("external"):
            loaded.mongo = mongo_from_environment()
        return loaded

    def orphaned(self) -> bool:
        """Whether the owning process is gone (a detached set is never an orphan)."""
        if self.owner is None:
            return False
        pid = self.owner.get("pid")
        return pid is None or process_start_ticks(pid) != self.owner.get("start_ticks")

    # ---- what clients need ----

    def exports(self) -> str:
        """One `export ...` line with the URLs of this set (credentials included: for a local shell)."""
        pairs: list[tuple[str, str]] = []
        if self.rabbitmq is not None:
            pairs += [
                ("TASKQ_AMQP_URL", self.rabbitmq.amqp_url),
                ("AMQP_URL", self.rabbitmq.amqp_url),
                ("RABBITMQ_MANAGEMENT_URL", self.rabbitmq.management_url),
            ]
        if self.mongo is not None:
            pairs += [("TASKQ_MONGODB_URI", self.mongo.uri), ("MONGODB_URI", self.mongo.uri)]
        return "export " + " ".join(f"{name}='{value}'" for name, value in pairs)


def _sets_root() -> Path:
    return paths.state_dir("services")


def session_services() -> ServiceSet:
    """A fresh set for this process (a pytest session), after stopping what dead sessions left."""
    sweep_orphans()
    base_dir = Path(tempfile.mkdtemp(prefix="session-", dir=_sets_root()))
    pid = os.getpid()
    owned = ServiceSet(base_dir=base_dir, owner={"pid": pid, "start_ticks": process_start_ticks(pid)})
    owned.save()
    return owned


def cli_services() -> ServiceSet:
    """The detached set of `taskq-dev services` (loaded if it is up, else a new empty one)."""
    base_dir = _sets_root() / CLI_SET
    return ServiceSet.load(base_dir) or ServiceSet(base_dir=base_dir)


def sweep_orphans() -> list[Path]:
    """Stop and delete every session set whose owning process has exited; return their folders.

    Then kill any server process whose data folder no longer exists (its set was deleted while it ran,
    or it was started before its pid could be recorded): such a process belongs to no one.
    """
    swept: list[Path] = []
    for folder in sorted(_sets_root().glob("session-*")):
        found = ServiceSet.load(folder)
        if found is None or not found.orphaned():
            continue
        with contextlib.suppress(ServiceError):  # its folder is gone either way; the processes were signalled
            found.close()
        swept.append(folder)
    kill_homeless_servers()
    return swept


def kill_homeless_servers() -> list[int]:
    """SIGKILL every harness server process (marked by `chroot.MARKER_ENV`) whose data folder is gone."""
    marked = chroot.all_marked_dirs().items()
    homeless = [pid for pid, folder in marked if not folder.exists() and not chroot.is_shared_epmd(pid)]
    chroot.kill_pids(homeless)
    return homeless


# ---- per-test isolation (used by the pytest fixtures) ----


def delete_queues(rabbitmq: RabbitMQService, queue: str) -> list[str]:
    """Delete `queue` and every queue named `queue.*` (its `.dead` and `.retry.<ms>` queues)."""
    vhost = quote(rabbitmq.vhost, safe="")
    try:
        with httpx.Client(base_url=rabbitmq.management_base, auth=rabbitmq.management_auth, timeout=10.0) as http:
            listing = http.get(f"/api/queues/{vhost}", params={"columns": "name", "disable_stats": "true"})
            listing.raise_for_status()
            names = [row["name"] for row in listing.json()]
            doomed = [name for name in names if name == queue or name.startswith(queue + ".")]
            for name in doomed:
                response = http.delete(f"/api/queues/{vhost}/{quote(name, safe='')}")
                if response.status_code not in (204, 404):
                    response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceError(f"could not delete queues {queue}* via {rabbitmq.management_base}: {type(exc).__name__}") from exc
    return doomed


def drop_database(mongo: MongoService, database: str) -> None:
    """Drop one database of the store."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.uri, serverSelectionTimeoutMS=10000)
    try:
        client.drop_database(database)
    except pymongo.errors.PyMongoError as exc:
        raise ServiceError(f"could not drop {database} on {redact_url(mongo.uri)}: {type(exc).__name__}") from exc
    finally:
        client.close()
