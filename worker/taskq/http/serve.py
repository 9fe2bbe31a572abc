"""Entry point of `taskq-api`: check the API tokens, then serve the intake app (`taskq.http.app`) with uvicorn.

Settings come from `TASKQ_*` variables, the tokens from `TASKQ_API_TOKENS_FILE` (`taskq.http.auth`);
host and port from the command line. Without tokens it refuses to start (exit 2, one line on
stderr) unless `TASKQ_API_AUTH=disabled` says so explicitly (local development only; logged as a warning).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from taskq.http.app import create_app
from taskq.http.auth import DISABLED, AuthConfigError, TokenSet, load_auth
from taskq.settings import Settings

log = logging.getLogger("taskq.http")


def main(argv: list[str] | None = None) -> None:
    """Parse `--host/--port/--log-level`, load the tokens (exit 2 when that fails) and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="taskq-api", description="taskq HTTP intake service")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    options = parser.parse_args(argv)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        auth = load_auth(os.environ)
    except AuthConfigError as exc:
        print(f"taskq-api: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if auth == DISABLED:
        log.warning("authentication DISABLED (TASKQ_API_AUTH): anyone reaching this port can submit (local development only)")
    elif isinstance(auth, TokenSet):
        log.info("%d API token(s) loaded", len(auth.tokens))
    app = create_app(Settings(), auth=auth)
    uvicorn.run(app, host=options.host, port=options.port, log_level=options.log_level, access_log=False)


if __name__ == "__main__":
    main()
