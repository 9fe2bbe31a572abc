"""`taskq-dev`: the developer harness on the command line (one typer app, one sub-app per area).

Sub-apps: `image` (Docker engine, base image, taskq image), `services` (RabbitMQ and the store
in the background, `taskq_dev.services_cli`). Used by the Makefile, `.ci/run` and
developers; the tests call the underlying modules directly.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from taskq_dev import docker
from taskq_dev.cluster_cli import bridge_app, cluster_app, tools_app
from taskq_dev.services_cli import services_app

app = typer.Typer(no_args_is_help=True, help="taskq developer harness: services, cluster, image.")

image_app = typer.Typer(no_args_is_help=True, help="The taskq container image (Docker).")
app.add_typer(image_app, name="image")
app.add_typer(services_app, name="services")
app.add_typer(cluster_app, name="cluster")
app.add_typer(bridge_app, name="bridge")
app.add_typer(tools_app, name="tools")


@image_app.command("daemon")
def image_daemon() -> None:
    """Start dockerd in the background unless a Docker engine already answers."""
    try:
        docker.ensure_daemon()
    except docker.DockerError as exc:
        typer.echo(f"taskq-dev: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"docker engine ready (log: {docker.daemon_log()})")


@image_app.command("base")
def image_base(
    rebuild: Annotated[bool, typer.Option(help="Make it again even if it exists.")] = False,
) -> None:
    """Make the local Debian + python3 base image (debootstrap, docker import); cached."""
    try:
        tag = docker.ensure_base_image(rebuild=rebuild)
    except docker.DockerError as exc:
        typer.echo(f"taskq-dev: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(tag)


@image_app.command("build")
def image_build(
    tag: Annotated[str, typer.Option(help="Tag of the image to build.")] = docker.IMAGE,
    base_image: Annotated[
        Optional[str],
        typer.Option(help="BASE_IMAGE build argument; 'default' keeps the Dockerfile's slim Python image."),
    ] = docker.BASE_IMAGE,
    offline: Annotated[
        bool, typer.Option(help="Install from a host-made wheelhouse with no index (no network in the build).")
    ] = True,
) -> None:
    """Build the taskq image (taskq-worker and taskq-operator) and print its tag and size."""
    try:
        built = docker.build_image(tag, base_image=None if base_image == "default" else base_image, offline=offline)
        size = docker.image_size_bytes(built)
    except docker.DockerError as exc:
        typer.echo(f"taskq-dev: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{built} {size / 1e6:.0f} MB")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
