"""Authentication on the CONNECT request: bearer tokens, query tokens, API keys, Basic.

Each middleware refuses with 401 (or 403 for an authenticated user the authorizator
turns away) before the session is accepted, and on success sets ``ctx.identity`` and
`AUTH_SCHEME`. Secrets are compared in constant time (`secrets_equal`) and never
logged or shown in a ``repr``; log lines name the scheme and the reason only.

A `validate` / `authenticator` callback may be sync or async. It returns the identity
(any object), or ``None`` / ``False`` to refuse; an exception it raises refuses too
(logged with its type only, since its message may quote the secret), except
`Rejected`, which passes through with its own status.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn

import structlog

from aiowt.transport import MalformedQuery, Rejected, SessionContext, UsageError
from aiowt.transport.request import parse_query

from ._options import callable_name, check_callable, header_name, maybe_await
from .chain import CallNext
from .keys import AUTH_SCHEME, REMOTE_USER, SECRET_NAMES

__all__ = [
    "Authenticator",
    "Authorizator",
    "BasicAuth",
    "BearerAuth",
    "QueryAuth",
    "RequireKey",
    "StaticTokens",
    "TokenValidator",
    "secrets_equal",
]

log = structlog.get_logger("aiowt.middleware.auth")

TokenValidator = Callable[[str], object | Awaitable[object]]
"""``validate(token)`` → the identity, or ``None`` / ``False`` to refuse; sync or async."""

Authenticator = Callable[[str, str], object | Awaitable[object]]
"""``authenticator(user, password)`` → truthy to accept; sync or async."""

Authorizator = Callable[[str, SessionContext], object | Awaitable[object]]
"""``authorizator(user, ctx)`` → truthy to let an authenticated user in; sync or async."""

# RFC 6750 b64token: what may follow "Bearer ".
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _digest(secret: str | bytes) -> bytes:
    raw = secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).digest()


def secrets_equal(given: str | bytes, expected: str | bytes) -> bool:
    """Compare two secrets in constant time, lengths included.

    Both sides are hashed first so `hmac.compare_digest` always compares 32 bytes: it
    would otherwise return early, and reveal the expected length, when lengths differ.
    """
    return hmac.compare_digest(_digest(given), _digest(expected))


class StaticTokens:
    """A `TokenValidator` for a fixed table of secret tokens → identities.

    Every entry is compared on every call, in constant time, so the answer's timing
    does not depend on which token (if any) matched. Only digests are kept.
    """

    def __init__(self, tokens: Mapping[str, object]) -> None:
        if not tokens:
            raise UsageError("StaticTokens needs at least one token → identity")
        entries: list[tuple[bytes, object]] = []
        for token, identity in tokens.items():
            if not isinstance(token, str) or not token:
                raise UsageError("tokens must be non-empty strings")
            if identity is None or identity is False:
                raise UsageError("an identity of None or False would refuse its own token")
            entries.append((_digest(token), identity))
        self._entries = tuple(entries)

    def __repr__(self) -> str:
        return f"StaticTokens(<{len(self._entries)} tokens>)"

    def __call__(self, token: str) -> object | None:
        given = _digest(token)
        found: object | None = None
        for known, identity in self._entries:
            # No early exit: the loop runs over every entry whatever matches.
            if hmac.compare_digest(given, known) and found is None:
                found = identity
        return found


async def _validated(
    scheme: str, ctx: SessionContext, callback: Callable[..., object], *args: object
) -> object | None:
    """Run a sync-or-async callback; its result, or ``None`` if it refused or raised."""
    try:
        result = await maybe_await(callback(*args))
    except Rejected as rejection:
        log.info(
            "refused: authentication",
            scheme=scheme,
            status=rejection.status,
            reason=rejection.reason,
            **ctx.ids,
        )
        raise
    except Exception as exc:
        # The message may quote the credential it choked on: log the type only.
        log.warning(
            "auth callback raised; refusing",
            scheme=scheme,
            callback=callable_name(callback),
            error_type=type(exc).__name__,
            **ctx.ids,
        )
        return None
    if result is None or result is False:
        return None
    return result


def _refuse(
    scheme: str,
    ctx: SessionContext,
    status: int,
    reason: str,
    challenge: str | None,
) -> NoReturn:
    log.info("refused: authentication", scheme=scheme, status=status, reason=reason, **ctx.ids)
    headers = [("www-authenticate", challenge)] if challenge else []
    raise Rejected(status, reason, headers=headers)


def _check_realm(realm: str | None, required: bool) -> str | None:
    if realm is None and not required:
        return None
    # The realm is sent inside a quoted string; quotes, backslashes and control
    # characters would break the challenge (and the connection) for every client.
    if (
        not isinstance(realm, str)
        or not realm
        or not realm.isprintable()
        or any(c in realm for c in '"\\')
    ):
        raise UsageError(
            f"realm must be a non-empty printable string without quotes or backslashes, "
            f"got {realm!r}"
        )
    return realm


class BearerAuth:
    """Require ``authorization: Bearer <token>`` and validate the token (RFC 6750).

    The scheme is case-insensitive. Statuses, all 401 with a ``www-authenticate``
    challenge (with `realm` if given): no header; another scheme; a malformed value
    (several ``authorization`` headers, no token, characters outside the b64token
    syntax) adds ``error="invalid_request"``; a token `validate` refuses adds
    ``error="invalid_token"``. The identity `validate` returns goes to ``ctx.identity``.
    """

    def __init__(self, validate: TokenValidator, *, realm: str | None = None) -> None:
        check_callable(validate, "validate")
        self.validate = validate
        self.realm = _check_realm(realm, required=False)
        self._challenge = "Bearer" if realm is None else f'Bearer realm="{realm}"'

    def __repr__(self) -> str:
        return f"BearerAuth({callable_name(self.validate)}, realm={self.realm!r})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        values = ctx.request.header_values("authorization")
        if not values:
            _refuse("bearer", ctx, 401, "missing bearer token", self._challenge)
        invalid_request = f'{self._challenge}, error="invalid_request"'
        if len(values) > 1:
            _refuse("bearer", ctx, 401, "malformed authorization header", invalid_request)
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer":
            _refuse("bearer", ctx, 401, "authorization scheme is not Bearer", self._challenge)
        token = token.strip(" ")
        if not _B64TOKEN.fullmatch(token):
            _refuse("bearer", ctx, 401, "malformed authorization header", invalid_request)
        identity = await _validated("bearer", ctx, self.validate, token)
        if identity is None:
            _refuse(
                "bearer",
                ctx,
                401,
                "invalid bearer token",
                f'{self._challenge}, error="invalid_token"',
            )
        ctx.identity = identity
        ctx.set(AUTH_SCHEME, "bearer")
        await call_next(ctx)


class QueryAuth:
    """Validate a token from query parameter `param` (``/chat?token=...``).

    Browsers cannot set headers on a WebTransport CONNECT, so this is how a page
    authenticates. The query is decoded strictly (`parse_query`): a malformed query
    string, or `param` given more than once, is a 400; a missing or empty token, or one
    `validate` refuses, is a 401 (with a ``www-authenticate: Bearer`` challenge: RFC
    6750 defines the query parameter as a way to send a bearer token). The path that
    aiowt logs never includes the query string, and the access logs redact `param`
    whatever its name (`SECRET_NAMES`), so the token stays out of the logs.
    """

    def __init__(self, param: str, validate: TokenValidator) -> None:
        # The name appears in refusal reasons, which travel in a header.
        if (
            not isinstance(param, str)
            or not param
            or not param.isprintable()
            or param != param.strip()
        ):
            raise UsageError(f"param must be a printable query parameter name, got {param!r}")
        check_callable(validate, "validate")
        self.param = param
        self.validate = validate

    def __repr__(self) -> str:
        return f"QueryAuth({self.param!r}, {callable_name(self.validate)})"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        _mark_secret(ctx, self.param)
        try:
            query = parse_query(ctx.request.query_string)
        except MalformedQuery as exc:
            _refuse("query", ctx, 400, f"malformed query string: {exc}", None)
        values = query.get(self.param, ())
        if len(values) > 1:
            _refuse("query", ctx, 400, f"query parameter {self.param!r} given more than once", None)
        if not values or not values[0]:
            _refuse("query", ctx, 401, f"missing token in query parameter {self.param!r}", "Bearer")
        identity = await _validated("query", ctx, self.validate, values[0])
        if identity is None:
            _refuse("query", ctx, 401, "invalid token", 'Bearer error="invalid_token"')
        ctx.identity = identity
        ctx.set(AUTH_SCHEME, "query")
        await call_next(ctx)


class RequireKey:
    """Require a static API key in request header `header` (seed 000's ``RequireKey``).

    Missing or wrong key: 401 (no challenge: there is no standard scheme for API-key
    headers); the header given more than once: 400. The key is compared in constant
    time and only its digest is kept. `identity`, if given, goes to ``ctx.identity``.
    """

    def __init__(self, header: str, key: str, *, identity: object | None = None) -> None:
        self.header = header_name(header)
        if not isinstance(key, str) or not key:
            raise UsageError("key must be a non-empty string")
        if key != key.strip(" \t") or not key.isprintable():
            # A client could never send such a value: HTTP/3 forbids it.
            raise UsageError("key must be printable, without surrounding whitespace")
        self._key_digest = _digest(key)
        self.identity = identity

    def __repr__(self) -> str:
        return f"RequireKey({self.header!r}, key=<hidden>)"

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        _mark_secret(ctx, self.header)
        values = ctx.request.header_values(self.header)
        if not values:
            _refuse("key", ctx, 401, "missing API key", None)
        if len(values) > 1:
            _refuse("key", ctx, 400, f"header {self.header} given more than once", None)
        if not hmac.compare_digest(_digest(values[0]), self._key_digest):
            _refuse("key", ctx, 401, "invalid API key", None)
        if self.identity is not None:
            ctx.identity = self.identity
        ctx.set(AUTH_SCHEME, "key")
        await call_next(ctx)


class BasicAuth:
    """HTTP Basic authentication with go-json-rest semantics (seed 003).

    Every refusal of the credentials is 401 with ``www-authenticate: Basic
    realm="<realm>", charset="UTF-8"``: no header, another scheme, base64 that does not
    decode, no ``:`` between user and password, non-UTF-8 text, or `authenticator`
    returning falsy. An `authorizator` that turns an authenticated user away gives 403.
    On success the user id goes to ``ctx.identity`` and `REMOTE_USER`.
    """

    def __init__(
        self,
        realm: str,
        authenticator: Authenticator,
        authorizator: Authorizator | None = None,
    ) -> None:
        self.realm = _check_realm(realm, required=True)
        check_callable(authenticator, "authenticator")
        if authorizator is not None:
            check_callable(authorizator, "authorizator")
        self.authenticator = authenticator
        self.authorizator = authorizator
        self._challenge = f'Basic realm="{realm}", charset="UTF-8"'

    def __repr__(self) -> str:
        authorizator = callable_name(self.authorizator) if self.authorizator else None
        return (
            f"BasicAuth({self.realm!r}, {callable_name(self.authenticator)},"
            f" authorizator={authorizator})"
        )

    def _credentials(self, ctx: SessionContext) -> tuple[str, str]:
        values = ctx.request.header_values("authorization")
        if not values:
            _refuse("basic", ctx, 401, "missing basic credentials", self._challenge)
        if len(values) > 1:
            _refuse("basic", ctx, 401, "malformed authorization header", self._challenge)
        scheme, _, payload = values[0].partition(" ")
        if scheme.lower() != "basic":
            _refuse("basic", ctx, 401, "authorization scheme is not Basic", self._challenge)
        try:
            text = base64.b64decode(payload.strip(" "), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            _refuse("basic", ctx, 401, "malformed basic credentials", self._challenge)
        user, colon, password = text.partition(":")
        if not colon:
            _refuse("basic", ctx, 401, "malformed basic credentials", self._challenge)
        return user, password

    async def __call__(self, ctx: SessionContext, call_next: CallNext) -> None:
        user, password = self._credentials(ctx)
        if await _validated("basic", ctx, self.authenticator, user, password) is None:
            _refuse("basic", ctx, 401, "invalid credentials", self._challenge)
        if (
            self.authorizator is not None
            and await _validated("basic", ctx, self.authorizator, user, ctx) is None
        ):
            _refuse("basic", ctx, 403, "not authorized", None)
        ctx.identity = user
        ctx.set(REMOTE_USER, user)
        ctx.set(AUTH_SCHEME, "basic")
        await call_next(ctx)


def _mark_secret(ctx: SessionContext, name: str) -> None:
    # Before any verdict: a refused credential must stay out of the logs too.
    ctx.set(SECRET_NAMES, ctx.get(SECRET_NAMES) | {name.lower()})
