"""What a task document can hold: the storability rules for arguments, results and error text.

Both stores taskq supports (MongoDB and FerretDB) must accept every value written: JSON data with
64-bit integers, finite floats, valid Unicode, string keys without `.`/`$`/NUL, no array directly
inside an array (FerretDB refuses those), bounded nesting. `storable_problem` checks a value without
recursion (a deeply nested or self-referencing value cannot crash the checker) and says what is
wrong; `safe_text` turns any text into something storable. Used by submission (arguments), the
worker's outcome decisions (results) and the runtime (error messages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_NESTING = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def safe_text(value: object, limit: int, *, keep: str = "head") -> str:
    """`value` as storable text: its `str()` (or a fallback if that raises), lone surrogates escaped, NUL
    replaced, at most `limit` characters (the head kept, or the tail with `keep="tail"`, marked with `…`)."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - a task's exception may have a __str__ that raises anything
        text = f"<{type(value).__name__} whose str() failed>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\ufffd")
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if keep == "head" else "…" + text[-(limit - 1) :]


def _text_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "string is not valid Unicode (lone surrogate)"
    return None


def _key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"key {key!r} is not a string"
    problem = _text_problem(key)
    if problem is not None:
        return f"key {key.encode('utf-8', 'replace').decode()!r}: {problem}"
    if "\x00" in key or key.startswith("$") or "." in key:
        return f"key {key!r} may not contain NUL or '.', nor start with '$'"
    return None


def _scalar_problem(value: object) -> str | None:
    """The problem of a scalar, None when fine, or "" when `value` is a container to descend into."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else "integer outside the 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a JSON number"
    if isinstance(value, (list, tuple, Mapping)):
        return ""
    return f"{type(value).__name__} is not JSON data"


_LEAVE = object()  # stack marker: the walk has left a container (it is no longer an ancestor)


def storable_problem(value: Any, where: str = "value", *, max_nesting: int = MAX_NESTING) -> str | None:
    """Why `value` cannot be stored in a task document (prefixed with its path), or None when it can."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    ancestors: set[int] = set()
    while stack:
        item, path, depth = stack.pop()
        if item is _LEAVE:
            ancestors.discard(depth)
            continue
        if depth > max_nesting:
            return f"{path}: nested deeper than {max_nesting} levels"
        problem = _scalar_problem(item)
        if problem:
            return f"{path}: {problem}"
        if problem is None:
            continue
        if id(item) in ancestors:
            return f"{path}: refers to itself (circular reference)"
        ancestors.add(id(item))
        stack.append((_LEAVE, path, id(item)))
        if isinstance(item, Mapping):
            for key, child in item.items():
                key_problem = _key_problem(key)
                if key_problem is not None:
                    return f"{path}: {key_problem}"
                stack.append((child, f"{path}.{key}", depth + 1))
        else:
            for index, child in enumerate(item):
                if isinstance(child, (list, tuple)):
                    return f"{path}[{index}]: an array directly inside an array cannot be stored; wrap it in an object"
                stack.append((child, f"{path}[{index}]", depth + 1))
    return None
