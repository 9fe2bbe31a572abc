"""Console-script shims: run an entry point, or name the missing extra in one line.

`pip install taskq` is the producer only; `taskq-worker`, `taskq-api` and `taskq-operator` need
`taskq[worker]`, `taskq[api]` and `taskq[operator]`. The scripts in pyproject.toml point here (and
at `taskq_operator.entry`), so that a missing third-party module prints
`taskq-worker: missing dependency 'prometheus_client'; install taskq[worker]` and exits with 2
instead of a traceback. Only the import of the real main module is guarded: errors raised while
it runs are its own.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import NoReturn, cast

MISSING_EXTRA_EXIT = 2
"""The exit status of a script whose extra is not installed (usage error, like argparse)."""

_OWN_PACKAGES = frozenset({"taskq", "taskq_operator"})


def missing_dependency_hint(script: str, extra: str, error: ModuleNotFoundError) -> str | None:
    """The one-line hint for `error`, or None when the missing module is taskq's own (a broken install)."""
    missing = error.name or ""
    if not missing or missing.partition(".")[0] in _OWN_PACKAGES:
        return None
    return f"{script}: missing dependency {missing!r}; install taskq[{extra}]"


def run_entry_point(script: str, extra: str, target: str) -> NoReturn:
    """Import `target` ("package.module:function") and exit with what the function returns.

    A `ModuleNotFoundError` for a third-party module during the import prints the hint on stderr and
    exits with `MISSING_EXTRA_EXIT`.
    """
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = missing_dependency_hint(script, extra, exc)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        raise SystemExit(MISSING_EXTRA_EXIT) from None
    main = cast(Callable[[], int | None], getattr(module, function_name))
    sys.exit(main())


def worker_main() -> NoReturn:
    """`taskq-worker` (extra `worker`)."""
    run_entry_point("taskq-worker", "worker", "taskq.worker.main:main")


def api_main() -> NoReturn:
    """`taskq-api` (extra `api`)."""
    run_entry_point("taskq-api", "api", "taskq.http.serve:main")
