"""Entry point of `taskq-api`: serve the intake app (`taskq.http.app`) with uvicorn.

Settings come from `TASKQ_*` variables; host and port from the command line.
"""

from __future__ import annotations

import argparse

import uvicorn

from taskq.http.app import create_app
from taskq.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Parse `--host/--port/--log-level` and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="taskq-api", description="taskq HTTP intake service")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    options = parser.parse_args(argv)
    uvicorn.run(create_app(Settings()), host=options.host, port=options.port, log_level=options.log_level, access_log=False)


if __name__ == "__main__":
    main()
