"""Bearer-token authentication of the HTTP intake: the token file, its scopes, and the FastAPI dependency.

`load_auth(environ)` is called once by `taskq.http.serve` at start: it reads `TASKQ_API_TOKENS_FILE`
(a file, or a directory such as a mounted Secret, every file of it in the same format) or accepts an
explicit `TASKQ_API_AUTH=disabled`, and raises `AuthConfigError` (one line) otherwise.
`taskq.http.app` protects each endpoint with `requires(scope, tokens)`.

Token file format, one token per line; blank lines and lines starting with `#` are ignored::

    # scopes        token
    submit,read     9f2c1d0e7a4b4c21a8d35e6f0b7c9d12
    read            3b6f0a9e1c2d4e5f8a7b6c5d4e3f2a1b

Scopes are `submit` (the POST endpoints) and `read` (the GET endpoints). A token is at least
`MIN_TOKEN_LENGTH` characters of RFC 6750's token alphabet (letters, digits, `-._~+/`, trailing `=`).
Only SHA-256 digests of the tokens are kept; a presented token is hashed and compared, in constant
time, with every configured digest (no early exit, and equal lengths so nothing leaks through them).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

SUBMIT: Final = "submit"
READ: Final = "read"
SCOPES: Final = frozenset({SUBMIT, READ})
MIN_TOKEN_LENGTH: Final = 16
TOKENS_FILE_ENV: Final = "TASKQ_API_TOKENS_FILE"
AUTH_ENV: Final = "TASKQ_API_AUTH"
DISABLED: Final = "disabled"

_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_CHALLENGE = 'Bearer realm="taskq"'

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="A token from the service's token file (TASKQ_API_TOKENS_FILE) with the operation's scope.",
)


class AuthConfigError(Exception):
    """The token configuration is missing or invalid (`taskq-api` exits 2 with this one line)."""


@dataclass(frozen=True)
class Token:
    """One configured token: the SHA-256 digest of its text, its scopes and where it was read (file:line)."""

    digest: bytes
    scopes: frozenset[str]
    source: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class TokenSet:
    """The configured tokens; `scopes_of` tells the scopes of a presented token (empty: not a token)."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        if not tokens:
            raise AuthConfigError("no API tokens configured")
        self.tokens = tuple(tokens)

    def scopes_of(self, presented: str) -> frozenset[str]:
        """The scopes of `presented`, comparing its digest with every configured one in constant time."""
        digest = _digest(presented)
        granted: frozenset[str] = frozenset()
        for token in self.tokens:  # no early exit: the time does not depend on which token matched
            if hmac.compare_digest(digest, token.digest):
                granted = granted | token.scopes
        return granted

    @classmethod
    def parse(cls, text: str, source: str) -> list[Token]:
        """The tokens of one file's `text`; errors name `source` and the line, never the token."""
        tokens: list[Token] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}:{number}"
            fields = line.split()
            if len(fields) != 2:
                raise AuthConfigError(f"{where}: expected '<scopes> <token>' (scopes: submit,read)")
            scope_text, token = fields
            scopes = frozenset(s for s in scope_text.split(",") if s)
            unknown = sorted(scopes - SCOPES)
            if not scopes or unknown:
                raise AuthConfigError(f"{where}: unknown scope(s) {', '.join(unknown) or '(none)'}; use submit and/or read")
            if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
                raise AuthConfigError(
                    f"{where}: a token needs {MIN_TOKEN_LENGTH}+ characters of A-Z a-z 0-9 - . _ ~ + / (trailing =)"
                )
            tokens.append(Token(digest=_digest(token), scopes=scopes, source=where))
        return tokens

    @classmethod
    def load(cls, path: Path) -> TokenSet:
        """Read a token file, or every visible regular file of a directory (a mounted Secret's keys)."""
        try:
            files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file()) if path.is_dir() else [path]
            tokens: list[Token] = []
            for file in files:
                tokens.extend(cls.parse(file.read_text(encoding="utf-8"), str(file)))
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"cannot read API tokens from {path}: {type(exc).__name__}") from None
        seen: dict[bytes, str] = {}
        for token in tokens:
            if token.digest in seen:
                raise AuthConfigError(f"{token.source}: the same token as {seen[token.digest]}; give it once with all its scopes")
            seen[token.digest] = token.source
        if not tokens:
            raise AuthConfigError(f"no API tokens in {path}")
        return cls(tokens)


Auth = TokenSet | Literal["disabled"]


def load_auth(environ: Mapping[str, str]) -> Auth:
    """The service's authentication from the environment: a `TokenSet`, or `"disabled"` when asked explicitly."""
    mode = environ.get(AUTH_ENV, "").strip().lower()
    path = environ.get(TOKENS_FILE_ENV, "").strip()
    if mode not in ("", "tokens", DISABLED):
        raise AuthConfigError(f"{AUTH_ENV}={mode!r} is not valid: leave it unset (tokens) or set it to 'disabled'")
    if mode == DISABLED:
        if path:
            raise AuthConfigError(f"both {AUTH_ENV}=disabled and {TOKENS_FILE_ENV} are set; choose one")
        return DISABLED
    if not path:
        raise AuthConfigError(
            f"no API tokens: set {TOKENS_FILE_ENV} to a token file (or {AUTH_ENV}=disabled, for local development only)"
        )
    return TokenSet.load(Path(path))


def requires(scope: str, tokens: TokenSet) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency: 401 without a valid bearer token, 403 when the token lacks `scope`."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def check(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> None:  # noqa: B008
        granted = tokens.scopes_of(credentials.credentials) if credentials is not None else frozenset()
        if not granted:
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": _CHALLENGE})
        if scope not in granted:
            raise HTTPException(
                403,
                f"the token lacks the {scope!r} scope",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'},
            )

    return check
