"""Browser sessions of the dashboard: the API's tokens presented once through a login form, then a cookie.

A browser cannot add a bearer header to a page load, so `/ui/login` takes a token of the API's
token file and stores it in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` behind HTTPS); every
request is then checked with the same `TokenSet.scopes_of` as the API (SHA-256, constant time), so
the scopes, the files and rotation (restart) are the API's: `read` opens the pages, `submit` allows
the actions (retry, cancel, requeue, purge). The cookie is stateless, so any replica of `taskq-api` accepts it.
Each action is a POST that must carry the session's CSRF token: an HMAC of a fixed label keyed by
the session's token digest, checked in constant time (the cookie cannot be read by scripts or sent
from another site; the token is a second, independent check). With `TASKQ_API_AUTH=disabled`
everyone has both scopes and the CSRF key is random per process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from taskq.http.auth import READ, SUBMIT, Auth, TokenSet

COOKIE: Final = "taskq_session"
COOKIE_MAX_AGE_S: Final = 12 * 3600
CSRF_FIELD: Final = "csrf"
_CSRF_LABEL: Final = b"taskq dashboard csrf v1"


@dataclass(frozen=True)
class Session:
    """Who is looking: the scopes granted, and the CSRF token their forms carry."""

    scopes: frozenset[str]
    csrf: str

    @property
    def can_read(self) -> bool:
        return READ in self.scopes

    @property
    def can_act(self) -> bool:
        return SUBMIT in self.scopes

    def csrf_ok(self, presented: str | None) -> bool:
        """Whether a form's CSRF field is this session's (constant time)."""
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class Sessions:
    """Turns the session cookie into a `Session` (or None: not logged in) for one app's `Auth`."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self._open_key = secrets.token_bytes(32)  # only for auth "disabled"

    @property
    def open(self) -> bool:
        """Authentication is disabled: no login, every scope."""
        return not isinstance(self.auth, TokenSet)

    def scopes_of(self, token: str) -> frozenset[str]:
        """The scopes of a presented token (empty: not a configured token)."""
        if not isinstance(self.auth, TokenSet):
            return frozenset({READ, SUBMIT})
        return self.auth.scopes_of(token)

    def from_cookie(self, cookie: str | None) -> Session | None:
        """The session of a request's cookie value, or None when it grants nothing."""
        if self.open:
            return Session(frozenset({READ, SUBMIT}), _csrf_token(self._open_key))
        if not cookie:
            return None
        scopes = self.scopes_of(cookie)
        if not scopes:
            return None
        return Session(scopes, _csrf_token(hashlib.sha256(cookie.encode("utf-8", "replace")).digest()))


def _csrf_token(key: bytes) -> str:
    return hmac.new(key, _CSRF_LABEL, hashlib.sha256).hexdigest()


def safe_next(target: str | None, default: str = "/") -> str:
    """A post-login redirect target only when it is a path of this site (no scheme, host or `//`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or "\n" in target:
        return default
    return target
