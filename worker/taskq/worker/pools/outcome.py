"""Turning what a task did into pool events: call it (awaiting coroutines), encode its result, describe its error.

Shared by every pool (the process pool uses it inside its children). Nothing here may raise
because of a task's bad value or bad exception: `str()` that raises, lone surrogates, huge messages
and unencodable results all become storable `ErrorInfo`s.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from taskq.context import Reject, TaskTimeout
from taskq.core.storable import safe_text
from taskq.registry import TaskSpec
from taskq.worker.pools.base import ErrorInfo

MESSAGE_MAX = 2000
TRACEBACK_MAX = 4000


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception as failure:  # noqa: BLE001 - a task's exception may have a __str__ that raises anything
        text = f"<str() of the exception failed: {type(failure).__name__}>"
    if not isinstance(text, str):  # a __str__ returning a non-str makes str() raise, but be sure
        text = "<unprintable exception>"
    return text


def _format_traceback(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - formatting a hostile exception must not fail the pool
        try:
            text = "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}: <unprintable>\n"
        except Exception:  # noqa: BLE001
            text = f"{type(exc).__name__}: <traceback unavailable>\n"
    return safe_text(text, TRACEBACK_MAX, keep="tail")


def error_info(exc: BaseException, spec: TaskSpec | None) -> ErrorInfo:
    """The storable description of an exception a task raised, with its retryability under `spec`'s rules."""
    name = safe_text(getattr(type(exc), "__name__", "Exception"), 200)
    message = safe_text(_describe(exc), MESSAGE_MAX)
    tb = _format_traceback(exc)
    if isinstance(exc, TaskTimeout):
        return ErrorInfo("TaskTimeout", message, tb, "timeout", True)
    if isinstance(exc, Reject):
        return ErrorInfo(name, message, tb, "rejected", False)
    retryable = spec.retryable(exc) if spec is not None else isinstance(exc, Exception)
    return ErrorInfo(name, message, tb, "raised", retryable)


def timeout_error(timeout_s: float, detail: str = "") -> ErrorInfo:
    """The error of an attempt stopped at its time limit."""
    message = f"the task exceeded its time limit of {timeout_s:g} s"
    return ErrorInfo("TaskTimeout", safe_text(message + (f"; {detail}" if detail else ""), MESSAGE_MAX), "", "timeout", True)


def lost_error(message: str) -> ErrorInfo:
    """The error of an attempt whose process (or thread) was lost before it reported."""
    return ErrorInfo("WorkerLost", safe_text(message, MESSAGE_MAX), "", "lost", True)


def cancelled_error() -> ErrorInfo:
    """The error of an attempt whose child was killed because the task was cancelled (never retried)."""
    return ErrorInfo("Cancelled", "the task was cancelled while it ran; its child process was killed", "", "cancelled", False)


def memory_error(limit_mb: int, rss_bytes: int) -> ErrorInfo:
    """The error of an attempt whose child was killed for using too much memory."""
    message = f"the child process used {rss_bytes / 2**20:.0f} MiB, over the limit of {limit_mb} MiB, and was killed"
    return ErrorInfo("MemoryLimitExceeded", message, "", "memory", True)


def encode_result(value: Any) -> tuple[str | None, ErrorInfo | None]:
    """`(json_text, None)` for a JSON-encodable value, else `(None, UnstorableResult error)`."""
    try:
        return json.dumps(value, allow_nan=False), None
    except Exception as exc:  # noqa: BLE001 - TypeError/ValueError/RecursionError, or anything a hostile object raises
        why = safe_text(f"{type(exc).__name__}: {_describe(exc)}", 300)
        message = f"the task's result cannot be stored as JSON ({why})"
        return None, ErrorInfo("UnstorableResult", message, "", "unstorable", False)


async def _bounded(awaitable: Awaitable[Any], timeout_s: float | None) -> Any:
    if timeout_s is None:
        return await awaitable
    limit = asyncio.timeout(timeout_s)
    try:
        async with limit:
            value = await awaitable
    except TimeoutError:
        if limit.expired():
            raise TaskTimeout(f"the task exceeded its time limit of {timeout_s:g} s") from None
        raise
    if limit.expired():  # the coroutine swallowed the cancellation and returned anyway
        raise TaskTimeout(f"the task exceeded its time limit of {timeout_s:g} s")
    return value


def call_sync(
    function: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    async_timeout_s: float | None = None,
    on_loop: Callable[[], None] | None = None,
) -> Any:
    """Call a task function in this thread; an `async def` (or a returned awaitable) runs under `asyncio.run`.

    `async_timeout_s` bounds the awaited part with `asyncio.timeout` (raising `TaskTimeout`);
    `on_loop` is called just before the event loop starts.
    """
    value = function(*args, **kwargs)
    if inspect.isawaitable(value):
        if on_loop is not None:
            on_loop()
        return asyncio.run(_bounded(value, async_timeout_s))
    return value
