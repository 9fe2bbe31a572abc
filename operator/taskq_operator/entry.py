"""The `taskq-operator` console script: `taskq_operator.main`, or a one-line hint naming `taskq[operator]`.

Kept apart from `main` so that a producer-only install (no kopf, no kubernetes) gets the hint from
`taskq._extras` instead of a traceback.
"""

from __future__ import annotations

from typing import NoReturn

from taskq._extras import run_entry_point


def main() -> NoReturn:
    run_entry_point("taskq-operator", "operator", "taskq_operator.main:main")
