"""The task registry: `@taskq.task` registers a function under a name; the worker looks names up.

Task modules (named on the `taskq-worker` command line or in `TASKQ_TASK_MODULES`) register their
functions when imported; `import_task_modules` does that import and reports what failed. Looked up
by the worker's connection stage (limits), its pools (the function, in each child process), its
start-up (capped decorator limits) and by `taskq.Client` (a decorator's `queue=`).
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from taskq.context import Reject
from taskq.core.message import TASK_NAME_PATTERN
from taskq.errors import InvalidTask, TaskqError, UnknownTask

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its function, the per-task defaults that override the settings, its retry rules.

    An exception is retried when it is an instance of `retry_for`, not of `dont_retry_for`, and not a
    `taskq.Reject` (see `retryable`).
    """

    name: str
    function: Callable[..., Any]
    queue: str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    retry_for: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_for: tuple[type[BaseException], ...] = ()

    def retryable(self, exc: BaseException) -> bool:
        """Whether an attempt that raised `exc` may be retried under this task's rules."""
        return isinstance(exc, self.retry_for) and not isinstance(exc, self.dont_retry_for) and not isinstance(exc, Reject)


_lock = threading.Lock()
_registry: dict[str, TaskSpec] = {}


def _default_name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", "") or ""
    qualname = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
    return f"{module}.{qualname}" if module and module != "__main__" else qualname


def register(spec: TaskSpec) -> TaskSpec:
    """Add `spec` to the registry; re-registering the same function (a module reload) is allowed."""
    if not re.fullmatch(TASK_NAME_PATTERN, spec.name):
        raise InvalidTask(f"task name {spec.name!r} is not valid (letters, digits, _ . : -; up to 200 chars)")
    if spec.max_retries is not None and spec.max_retries < 0:
        raise InvalidTask(f"task {spec.name!r}: max_retries must be >= 0")
    if spec.timeout is not None and spec.timeout <= 0:
        raise InvalidTask(f"task {spec.name!r}: timeout must be > 0")
    for label, kinds in (("retry_for", spec.retry_for), ("dont_retry_for", spec.dont_retry_for)):
        if not isinstance(kinds, tuple) or not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds):
            raise InvalidTask(f"task {spec.name!r}: {label} must be a tuple of exception classes")
    with _lock:
        existing = _registry.get(spec.name)
        if existing is not None and _qualified(existing.function) != _qualified(spec.function):
            raise InvalidTask(f"task name {spec.name!r} is already registered by {_qualified(existing.function)}")
        _registry[spec.name] = spec
    return spec


def _qualified(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


@overload
def task(name: F, /) -> F: ...


@overload
def task(
    name: str | None = None,
    *,
    queue: str | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    retry_for: tuple[type[BaseException], ...] = (Exception,),
    dont_retry_for: tuple[type[BaseException], ...] = (),
) -> Callable[[F], F]: ...


def task(
    name: str | F | None = None,
    *,
    queue: str | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    retry_for: tuple[type[BaseException], ...] = (Exception,),
    dont_retry_for: tuple[type[BaseException], ...] = (),
) -> F | Callable[[F], F]:
    """Register a task function: `@task`, `@task("resize")` or `@task(name=..., max_retries=..., timeout=...)`.

    `retry_for`/`dont_retry_for` choose which exceptions may be retried (default: any `Exception`;
    `taskq.Reject` never is). The function is returned unchanged, so it stays callable directly
    (e.g. in unit tests); `async def` functions are awaited by every worker pool.
    """
    if callable(name):
        function = name
        register(TaskSpec(_default_name(function), function))
        return function

    def decorate(function: F) -> F:
        register(TaskSpec(name or _default_name(function), function, queue, max_retries, timeout, retry_for, dont_retry_for))
        return function

    return decorate


def lookup(name: str) -> TaskSpec:
    """The task registered as `name`, or `UnknownTask`."""
    with _lock:
        spec = _registry.get(name)
    if spec is None:
        raise UnknownTask(f"no task registered under the name {name!r}")
    return spec


def registered_names() -> list[str]:
    """Every registered task name, sorted."""
    with _lock:
        return sorted(_registry)


def import_task_modules(modules: Iterable[str]) -> list[str]:
    """Import each module so its tasks register; return the names of the modules imported.

    An import failure becomes a `TaskqError` naming the module, so the worker can exit with a clear
    message instead of consuming tasks it cannot run.
    """
    imported: list[str] = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import-time error becomes one clear startup error
            raise TaskqError(f"cannot import task module {module!r}: {type(exc).__name__}: {exc}") from None
        imported.append(module)
    return imported
