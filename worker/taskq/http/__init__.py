"""The HTTP intake service (`taskq-api`): FastAPI app over `taskq.Client`; see `taskq.http.app`."""
