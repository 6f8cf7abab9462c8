"""Scoped bearer tokens: the tokens file format, loading, reloading, and constant-time lookup.

The tokens file (`--tokens-file`) holds one token per line, `TOKEN SCOPE [NAME]`, where SCOPE is
`read` (searches, statistics, progress) or `write` (everything). `#` starts a comment line; blank lines
are ignored. A malformed line is an error naming its line number, never the token.

`TokenStore` keeps the current set. It reloads the file when it changes (its size, mtime or inode,
checked at most once a second on the call path) and on `reload()` (SIGHUP). A reload that fails keeps
the previous tokens and logs an error. The single `--auth-token` / CLIPSEARCH_AUTH_TOKEN, if set, is
always one more write token. Tokens are kept only as SHA-256 digests and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from clipsearch_core.errors import ServiceError

__all__ = ["READ", "SCOPES", "WRITE", "Token", "TokenStore", "TokensFileError", "parse_tokens", "scope_allows"]

log = logging.getLogger(__name__)

READ = "read"
WRITE = "write"
SCOPES = (READ, WRITE)
CHECK_INTERVAL_S = 1.0


class TokensFileError(ServiceError):
    """The tokens file cannot be used; the message names the file and line (never a token)."""


@dataclass(frozen=True)
class Token:
    """A known token: its SHA-256 digest, scope, and a name for logs and messages."""

    digest: bytes
    scope: str
    name: str


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def scope_allows(held: str, needed: str) -> bool:
    """Whether a token of scope `held` may make a call that needs `needed` (write includes read)."""
    return held == WRITE or held == needed


def parse_tokens(text: str, source: str) -> list[Token]:
    """The tokens of a tokens file's text; `source` names the file in error messages."""
    tokens: list[Token] = []
    seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source} line {number}"
        if len(fields) not in (2, 3):
            raise TokensFileError(
                f"{where}: expected 'TOKEN SCOPE [NAME]' (2 or 3 fields separated by spaces), got {len(fields)} fields")
        scope = fields[1]
        if scope not in SCOPES:
            raise TokensFileError(f"{where}: unknown scope (the second field must be 'read' or 'write')")
        digest = _digest(fields[0])
        if digest in seen:
            raise TokensFileError(f"{where}: the same token is already listed on line {seen[digest]}")
        seen[digest] = number
        tokens.append(Token(digest, scope, fields[2] if len(fields) == 3 else f"line {number}"))
    return tokens


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TokenStore:
    """The tokens the server accepts: the tokens file's (kept current) plus the single auth token."""

    def __init__(self, tokens_file: Path | None = None, auth_token: str = "") -> None:
        self._path = tokens_file
        self._fixed = [Token(_digest(auth_token), WRITE, "CLIPSEARCH_AUTH_TOKEN")] if auth_token else []
        self._from_file: list[Token] = []
        self._signature: tuple[int, int, int] | None = None
        self._next_check = 0.0
        if tokens_file is not None:
            self._load()  # a start-up error propagates
        self._next_check = time.monotonic() + CHECK_INTERVAL_S

    def _load(self) -> None:
        assert self._path is not None
        signature = _signature(self._path)
        try:
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokensFileError(f"cannot read tokens file {self._path}: {exc}") from None
        tokens = parse_tokens(text, str(self._path))
        self._from_file, self._signature = tokens, signature
        counts = {scope: sum(t.scope == scope for t in tokens) for scope in SCOPES}
        log.info("tokens file %s: %d read and %d write tokens (%s)", self._path, counts[READ], counts[WRITE],
                 ", ".join(t.name for t in tokens) or "none")

    def reload(self) -> bool:
        """Reads the tokens file again; on failure keeps the previous tokens, logs why, returns False."""
        if self._path is None:
            return True
        try:
            self._load()
            return True
        except TokensFileError as exc:
            self._signature = _signature(self._path)  # report a bad file once, not on every check
            log.error("tokens file not reloaded, keeping the previous %d tokens: %s", len(self._from_file), exc)
            return False

    def maybe_reload(self) -> None:
        """Reloads the tokens file if it changed; checks at most once per CHECK_INTERVAL_S."""
        if self._path is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL_S
        if _signature(self._path) != self._signature:
            self.reload()

    def lookup(self, token: str | bytes) -> Token | None:
        """The known token equal to `token`, comparing digests in constant time against every token."""
        digest = _digest(token)
        found: Token | None = None
        for known in (*self._from_file, *self._fixed):  # the auth token stays write
            if hmac.compare_digest(digest, known.digest):
                found = known
        return found
