"""The taskq dashboard: server-rendered pages with htmx, served by `taskq-api` at `/` (see `routes`).

Pages: queues (`/`), workers, tasks (filters, pages), one task, dead letters; actions: retry or cancel a
task, requeue dead letters, purge a queue. Login and scopes: `session`; reads: `data`; actions:
`actions`. htmx (2.0.11, Zero-Clause BSD) is vendored under `static/` and served by the API.
"""

from taskq.http.dashboard.routes import dashboard_router

__all__ = ["dashboard_router"]
