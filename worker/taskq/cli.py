"""The `taskq` command line: submit tasks, read their status, inspect and administer queues.

Exit codes: 0 ok, 1 task or queue not found (or a declined confirmation), 2 usage or validation
error, 3 broker or store unavailable, 4 a given task id exists as another task (other queue or name),
or a cancel came too late (the task is final already), or a retry of a task neither failed nor dead;
5 `wait` timed out.
Expected failures print one line on stderr, never a traceback and never credentials. `--json`
prints machine-readable output on stdout. Entry point `taskq` (pyproject); all work goes through
`taskq.Client`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from taskq.client import Client, SubmitReceipt
from taskq.core.message import TaskMessage
from taskq.core.states import TaskState
from taskq.errors import (
    BrokerRejected,
    BrokerUnavailable,
    InvalidTask,
    QueueNotFound,
    StoreUnavailable,
    TaskConflict,
    TaskNotFound,
    TaskqError,
    TaskStateConflict,
    WaitTimedOut,
)
from taskq.settings import Settings
from taskq.sweeper import DEFAULT_GRACE_S, DEFAULT_LIMIT

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_CONFLICT = 4
EXIT_TIMEOUT = 5

app = typer.Typer(
    name="taskq",
    help="Submit taskq tasks and inspect their status and queues (settings from TASKQ_* variables).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text.")]
QueueOption = Annotated[str | None, typer.Option("--queue", "-q", help="Queue name (default: TASKQ_QUEUE).")]


def _fail(code: int, message: str) -> NoReturn:
    stderr.print(f"taskq: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _client() -> Iterator[Client]:
    """A client from the environment; taskq's expected errors become one line and an exit code."""
    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:  # a bad TASKQ_* variable (a value, or JSON that does not parse)
        _fail(EXIT_USAGE, f"invalid settings: {str(exc).splitlines()[0]}")
    client = Client(settings)
    try:
        yield client
    except (TaskNotFound, QueueNotFound) as exc:
        _fail(EXIT_NOT_FOUND, str(exc))
    except InvalidTask as exc:
        _fail(EXIT_USAGE, f"invalid task: {exc}")
    except TaskConflict as exc:
        _fail(EXIT_CONFLICT, f"conflict: {exc}")
    except (BrokerUnavailable, StoreUnavailable, BrokerRejected) as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    except TaskqError as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    finally:
        client.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_json_default, sort_keys=True) + "\n")


def _parse_json(text: str | None, what: str, kind: type) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(EXIT_USAGE, f"{what} is not JSON: {exc}")
    if not isinstance(value, kind):
        _fail(EXIT_USAGE, f"{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time (no zone: UTC), or `<n>s|m|h|d` meaning that long ago."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return datetime.now(UTC) - timedelta(seconds=float(relative.group(1)) * _UNIT_S[relative.group(2)])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        _fail(EXIT_USAGE, f"{what}: not an ISO 8601 time or a duration like 10m: {text!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _read_jsonl(client: Client, path: Path, queue: str | None) -> list[TaskMessage]:
    """Every task of a JSON-lines file, validated before anything is submitted."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if str(path) != "-" else sys.stdin.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(EXIT_USAGE, f"cannot read {path}: {exc}")
    messages: list[TaskMessage] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            _fail(EXIT_USAGE, f"{path}:{number}: not JSON: {exc}")
        try:
            messages.append(client.as_message(data, queue))
        except InvalidTask as exc:
            _fail(EXIT_USAGE, f"{path}:{number}: invalid task: {exc}")
    if not messages:
        _fail(EXIT_USAGE, f"{path}: no tasks")
    return messages


def _submit_with_progress(client: Client, messages: Any, total: int, quiet: bool) -> tuple[SubmitReceipt, float]:
    started = time.perf_counter()
    if quiet:
        receipt = client.submit_many(messages)
        return receipt, time.perf_counter() - started
    columns = (TextColumn("submitting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=False) as bar:
        job = bar.add_task("submit", total=total)
        receipt = client.submit_many(messages, progress=lambda n: bar.advance(job, n))
    return receipt, time.perf_counter() - started


@app.command()
def submit(
    name: Annotated[str | None, typer.Argument(help="Task name (omit with --file).")] = None,
    args: Annotated[str | None, typer.Option("--args", "-a", help="Positional arguments as a JSON array.")] = None,
    kwargs: Annotated[str | None, typer.Option("--kwargs", "-k", help="Keyword arguments as a JSON object.")] = None,
    queue: QueueOption = None,
    priority: Annotated[int, typer.Option(help="Priority (higher runs first, up to the queue's maximum).")] = 0,
    task_id: Annotated[
        str | None, typer.Option("--id", help="Task id (an idempotency key: an existing id is not sent again).")
    ] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries after the first attempt (default: TASKQ_MAX_RETRIES).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Hard timeout in seconds (default: TASKQ_TASK_TIMEOUT).")] = None,
    countdown: Annotated[
        float | None, typer.Option(help="Run no sooner than this many seconds from now (the task is `scheduled` until then).")
    ] = None,
    eta: Annotated[
        str | None, typer.Option(help="Run no sooner than this ISO 8601 time (no zone: UTC), e.g. 2026-12-24T18:00:00+01:00.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Submit every task of a JSON-lines file ('-' for stdin).")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Submit this many copies of the task (load).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Submit one task, N copies of it (--count), or every task of a JSON-lines file (--file)."""
    if file is not None and (name is not None or count is not None or task_id is not None):
        _fail(EXIT_USAGE, "--file takes the tasks from the file: give no NAME, --count or --id")
    if file is None and name is None:
        _fail(EXIT_USAGE, "give a task NAME or --file")
    if count is not None and task_id is not None:
        _fail(EXIT_USAGE, "--count creates distinct tasks: it cannot take one --id")
    with _client() as client:
        if file is not None:
            messages = _read_jsonl(client, file, queue)
            receipt, seconds = _submit_with_progress(client, messages, len(messages), quiet=as_json)
        else:
            assert name is not None
            positional = _parse_json(args, "--args", list)
            keywords = _parse_json(kwargs, "--kwargs", dict)
            options: dict[str, Any] = {
                "queue": queue,
                "priority": priority,
                "max_retries": max_retries,
                "timeout": timeout,
                "countdown": countdown,
                "eta": _parse_time(eta, "--eta") if eta is not None else None,
            }
            if count is None:
                message = client.message(name, positional, keywords, task_id=task_id, **options)
                receipt, seconds = _submit_with_progress(client, [message], 1, quiet=True)
            else:
                client.message(name, positional, keywords, **options)  # validate once, before any is sent
                copies = (client.message(name, positional, keywords, **options) for _ in range(count))
                receipt, seconds = _submit_with_progress(client, copies, count, quiet=as_json)
    rate = len(receipt.ids) / seconds if seconds > 0 else 0.0
    if as_json:
        _print_json(
            {
                "ids": receipt.ids,
                "published": receipt.published,
                "existing": receipt.existing,
                "seconds": round(seconds, 3),
                "rate": round(rate, 1),
            }
        )
    elif len(receipt.ids) == 1:
        print(receipt.ids[0])
        if receipt.existing:
            stderr.print("taskq: a task with this id exists already; not sent again", highlight=False)
    else:
        print(
            f"submitted {len(receipt.ids)} tasks ({receipt.published} sent, {receipt.existing} already known)"
            f" in {seconds:.2f} s, {rate:,.0f} tasks/s"
        )


@app.command()
def status(task_id: Annotated[str, typer.Argument(help="Task id.")], as_json: JsonOption = False) -> None:
    """Show one task's state, attempts, result or error."""
    with _client() as client:
        document = client.status(task_id)
    if as_json:
        _print_json(document)
        return
    table = Table(show_header=False, box=None)
    for key in ("id", "name", "queue", "state", "attempts", "worker", "priority", "created_at", "updated_at"):
        table.add_row(key, str(document.get(key)))
    if document.get("eta") is not None:
        table.add_row("eta", str(document["eta"]))
    table.add_row("args", json.dumps(document.get("args"), default=_json_default))
    table.add_row("kwargs", json.dumps(document.get("kwargs"), default=_json_default))
    if document.get("result") is not None:
        table.add_row("result", json.dumps(document["result"], default=_json_default))
    error = document.get("error")
    if error:
        table.add_row("error", f"{error.get('type')}: {error.get('message')}")
    stdout.print(table)


@app.command()
def cancel(task_id: Annotated[str, typer.Argument(help="Task id.")], as_json: JsonOption = False) -> None:
    """Cancel a queued, running or retrying task: it ends `cancelled` (exit 4 if it is final already)."""
    with _client() as client:
        result = client.cancel(task_id)
    if as_json:
        _print_json({"id": result.task_id, "cancelled": result.cancelled, "state": result.state.value})
    elif result.cancelled:
        print(f"cancelled {result.task_id}" + ("" if result.notified else " (workers not notified: broker unavailable)"))
    if not result.cancelled:
        _fail(EXIT_CONFLICT, f"not cancelled: task {result.task_id!r} is already {result.state.value}")


@app.command("list")
def list_tasks(
    queue: QueueOption = None,
    state: Annotated[
        TaskState | None, typer.Option("--state", "-s", case_sensitive=False, help="Only tasks in this state.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, max=10_000, help="At most this many (newest first).")] = 50,
    name: Annotated[str | None, typer.Option("--name", help="Only tasks of this task name.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only tasks updated since this ISO 8601 time, or this long ago (30s, 10m, 2h, 1d)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List the most recently updated tasks."""
    after = _parse_time(since, "--since") if since is not None else None
    with _client() as client:
        documents = client.list(queue=queue, state=state, limit=limit, name=name, since=after)
    if as_json:
        _print_json(documents)
        return
    table = Table("id", "name", "queue", "state", "attempts", "updated")
    for doc in documents:
        updated = doc.get("updated_at")
        table.add_row(
            doc["id"],
            doc.get("name", ""),
            doc.get("queue", ""),
            doc.get("state", ""),
            str(doc.get("attempts", "")),
            updated.isoformat(timespec="seconds") if isinstance(updated, datetime) else "",
        )
    stdout.print(table)


@app.command()
def wait(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.")],
    timeout: Annotated[float, typer.Option("--timeout", "-t", min=0.0, help="Give up after this many seconds (exit 5).")] = 60.0,
    as_json: JsonOption = False,
) -> None:
    """Wait until every given task is final; print their final states (a progress bar for several)."""
    with _client() as client:
        try:
            if len(task_ids) > 1 and not as_json:
                columns = (TextColumn("waiting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
                with Progress(*columns, console=stderr, transient=False) as bar:
                    job = bar.add_task("wait", total=len(set(task_ids)))
                    finals = client.wait(task_ids, timeout, progress=lambda n: bar.advance(job, n))
            else:
                finals = client.wait(task_ids, timeout)
        except WaitTimedOut as exc:
            if as_json:
                _print_json({"finished": list(exc.finished.values()), "pending": exc.pending})
            _fail(EXIT_TIMEOUT, f"timed out: {exc}")
    if as_json:
        _print_json(list(finals.values()))
        return
    for task_id, document in finals.items():
        print(f"{task_id} {document.get('state')}")


@app.command()
def workers(queue: QueueOption = None, as_json: JsonOption = False) -> None:
    """List workers from their heartbeats: queue, tasks in flight, processed, last heartbeat, started."""
    with _client() as client:
        rows = client.workers(queue)
    if as_json:
        _print_json(rows)
        return
    now = datetime.now(UTC)
    table = Table("id", "queue", "inflight", "processed", "heartbeat", "up")
    for row in rows:
        beat, started = row.get("heartbeat_at"), row.get("started_at")
        table.add_row(
            str(row["id"]),
            str(row.get("queue", "")),
            str(row.get("inflight", "")),
            str(row.get("processed", "")),
            f"{_age_s(beat, now):.0f} s ago" if isinstance(beat, datetime) else "",
            f"{_age_s(started, now):.0f} s" if isinstance(started, datetime) else "",
        )
    stdout.print(table)


def _age_s(then: datetime, now: datetime) -> float:
    return (now - (then if then.tzinfo else then.replace(tzinfo=UTC))).total_seconds()


@app.command()
def retry(task_id: Annotated[str, typer.Argument(help="Task id.")], as_json: JsonOption = False) -> None:
    """Run a failed or dead task again as a fresh first attempt (exit 4 if it is in another state)."""
    with _client() as client:
        try:
            how = client.retry(task_id)
        except TaskStateConflict as exc:
            _fail(EXIT_CONFLICT, f"not retried: {exc}")
    if as_json:
        _print_json({"id": task_id, "retried": how})
    else:
        print(f"{how} {task_id}")


@app.command()
def expire(
    queue: QueueOption = None,
    ttl: Annotated[
        int | None, typer.Option("--ttl", min=0, help="Seconds a finished task is kept (default: TASKQ_RESULT_TTL, 7 days).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="At most this many per run.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Delete finished tasks older than the result TTL (what the operator's sweep does per TaskQueue)."""
    with _client() as client:
        deleted = client.expire_finished(queue, ttl_s=ttl, limit=limit)
    if as_json:
        _print_json({"deleted": deleted})
    else:
        print(f"deleted {deleted} finished task(s)")


@app.command()
def queue(
    name: Annotated[str | None, typer.Argument(help="Queue name (default: TASKQ_QUEUE).")] = None, as_json: JsonOption = False
) -> None:
    """Show a queue's ready messages, consumers, dead letters and task counts by state."""
    with _client() as client:
        info = client.queue_info(name)
    data = {"name": info.name, "ready": info.ready, "consumers": info.consumers, "dead": info.dead, "counts": info.counts}
    if as_json:
        _print_json(data)
        return
    table = Table(show_header=False, box=None)
    for key in ("name", "ready", "consumers", "dead"):
        table.add_row(key, str(data[key]))
    for state_name, n in info.counts.items():
        table.add_row(f"tasks {state_name}", str(n))
    stdout.print(table)


@app.command()
def dead(
    queue: QueueOption = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, max=10_000, help="At most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List dead-lettered messages of a queue with the reason (they stay dead-lettered)."""
    with _client() as client:
        letters = client.dead(queue, limit=limit)
    rows = [
        {"id": letter.task_id, "name": letter.message.name if letter.message else None, "reason": letter.reason}
        for letter in letters
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "name", "reason")
    for row in rows:
        table.add_row(str(row["id"] or "-"), str(row["name"] or "-"), row["reason"])
    stdout.print(table)


@app.command("requeue-dead")
def requeue_dead(
    queue: QueueOption = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, max=100_000, help="At most this many.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Send dead-lettered tasks back to their queue as fresh first attempts (malformed ones stay)."""
    with _client() as client:
        report = client.requeue_dead(queue, limit=limit)
    if as_json:
        _print_json({"requeued": report.requeued, "left": report.left})
    else:
        print(f"requeued {len(report.requeued)} task(s); {report.left} left dead-lettered")


@app.command()
def purge(
    name: Annotated[str | None, typer.Argument(help="Queue name (default: TASKQ_QUEUE).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    keep_dead: Annotated[bool, typer.Option("--keep-dead", help="Leave the dead-letter queue alone.")] = False,
    keep_documents: Annotated[bool, typer.Option("--keep-documents", help="Leave the task documents in the store.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Drop a queue's waiting messages, delayed ones included (and dead letters, and task documents). Asks first."""
    with _client() as client:
        target = name or client.settings.queue
        if not yes:
            if not sys.stdin.isatty():
                _fail(EXIT_USAGE, "refusing to purge without a terminal to confirm on; pass --yes")
            what = (
                "waiting messages" + ("" if keep_dead else ", dead letters") + ("" if keep_documents else " and task documents")
            )
            if not typer.confirm(f"Drop all {what} of queue {target!r}?", default=False, err=True):
                _fail(EXIT_NOT_FOUND, "purge cancelled")
        report = client.purge(target, include_dead=not keep_dead, include_documents=not keep_documents)
    if as_json:
        _print_json({"messages": report.messages, "documents": report.documents})
    else:
        dropped = ", ".join(f"{n} from {q}" for q, n in report.messages.items())
        print(f"purged {dropped}; {report.documents} task document(s) deleted")


@app.command()
def sweep(
    grace: Annotated[
        float, typer.Option("--grace", min=0.0, help="Seconds an unconfirmed publish is left to its producer first.")
    ] = DEFAULT_GRACE_S,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many tasks per run.")] = DEFAULT_LIMIT,
    as_json: JsonOption = False,
) -> None:
    """Publish again the tasks whose publish was never confirmed (a producer died or failed mid-submission)."""
    with _client() as client:
        report = client.sweep(grace_s=grace, limit=limit)
    if as_json:
        _print_json({"republished": report.republished, "dropped": report.dropped})
    else:
        print(f"republished {len(report.republished)} task(s); {len(report.dropped)} entry(ies) needed no message")


def main() -> None:
    """Entry point of the `taskq` console script."""
    app()


if __name__ == "__main__":
    main()
