"""`taskq-dev services up|env|status|down`: detached test services for the demo and benchmarks.

`up` starts RabbitMQ and the store in the background (or adopts `AMQP_URL` / `MONGODB_URI`), records
them under `paths.state_dir("services")/cli`, and prints the `export` line clients need; `down`
stops them and deletes their data. The private broker is RabbitMQ 4.0 unless `TASKQ_TEST_RABBITMQ=3.10`
(as for the tests). Mounted on the `taskq-dev` app by `taskq_dev.cli`.
"""

from __future__ import annotations

import typer

from taskq.errors import redact_url
from taskq_dev import mongo
from taskq_dev.rabbitmq import PrivateRabbitMQ, selected_series
from taskq_dev.service_base import ServiceError
from taskq_dev.services import ServiceSet, cli_services

services_app = typer.Typer(no_args_is_help=True, help="RabbitMQ and MongoDB/FerretDB on loopback, in the background.")


def _fail(message: str) -> None:
    typer.echo(f"taskq-dev: {message}", err=True)
    raise typer.Exit(1)


def _recorded() -> ServiceSet:
    found = cli_services()
    if found.rabbitmq is None and found.mongo is None:
        _fail("services are not up; run `taskq-dev services up`")
    return found


@services_app.command("up")
def services_up() -> None:
    """Start both services (once) and print `export TASKQ_AMQP_URL=... TASKQ_MONGODB_URI=... ...`."""
    services = cli_services()
    already_up = {name for name in services.startup_seconds}
    try:
        services.revive()
        broker = services.ensure_rabbitmq()
        services.ensure_mongo()
        wanted = selected_series()
        version = broker.version
    except ServiceError as exc:
        _fail(str(exc))
    for name, seconds in services.startup_seconds.items():
        if name not in already_up:
            typer.echo(f"# {name} started in {seconds:.1f} s", err=True)
    typer.echo(f"# rabbitmq {version}", err=True)
    if isinstance(broker, PrivateRabbitMQ) and broker.series != wanted:
        typer.echo(f"# the running broker is the {broker.series} node; for {wanted}: `taskq-dev services down` first", err=True)
    typer.echo(services.exports())


@services_app.command("env")
def services_env() -> None:
    """Print the `export ...` line of the running services again (for `eval $(taskq-dev services env)`)."""
    typer.echo(_recorded().exports())


@services_app.command("status")
def services_status() -> None:
    """Say for each service whether it runs and answers; exit 1 if one does not."""
    services = _recorded()
    healthy = True
    if services.rabbitmq is not None:
        answers = services.rabbitmq.management_answers()
        healthy &= answers
        typer.echo(
            f"rabbitmq  {'up' if answers else 'DOWN'}  {redact_url(services.rabbitmq.amqp_url)}  "
            f"management {services.rabbitmq.management_base}"
        )
    if services.mongo is not None:
        answers = mongo.ping(services.mongo.uri)
        healthy &= answers
        kind = services.mongo.kind
        typer.echo(f"{kind:<9} {'up' if answers else 'DOWN'}  {redact_url(services.mongo.uri)}")
    if not healthy:
        raise typer.Exit(1)


@services_app.command("down")
def services_down() -> None:
    """Stop the services started by `up` and delete their data."""
    services = cli_services()
    try:
        services.close()
    except ServiceError as exc:
        _fail(str(exc))
    typer.echo("services down")
