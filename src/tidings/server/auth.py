"""Who is asking, and whether they may: principals, credentials and the one ``authorize()``.

Theory of operation
-------------------

Every request has a :class:`Principal`: *anonymous*, a *client* identified by
a JWT (its ``sub`` and the channel permissions it grants), the *server*
(an API key), or the *admin* (the ``admin_key``, which opens ``/admin``).
:meth:`Authority.authenticate` reads the request's credentials once, when a
request or connection starts, from the first of

1. ``Authorization: Bearer <jwt>``, ``Authorization: ApiKey <key>`` or
   ``Authorization: Admin <admin key>``,
2. ``X-API-Key: <key>``,
3. ``?token=<jwt>`` (``EventSource`` cannot set headers),
4. the token cookie, when one is configured.

A credential that is present but refused (malformed, wrongly signed,
``alg: none``, expired, not yet valid, wrong audience or issuer, an unknown
key) is an :class:`~tidings.errors.Unauthorized` error: it never falls back to
anonymous.

:meth:`Authority.authorize` is the one decision for every operation on every
transport. The admin actions (:data:`Action.ADMIN`) need the admin principal
and nothing else opens them, not even an API key; the admin principal may
also publish (the admin page's test events) where the namespace lets
clients publish at all, and nothing more. A server principal may do
everything else. For anyone else, on a channel, in this order:

1. the namespace must allow the action for clients at all (``subscribe``,
   ``publish``, ``history``, ``presence``), else ``permission_denied``;
2. a token that grants the action on the channel (an exact name or a glob
   pattern such as ``chat:*``) allows it;
3. in a *private* namespace, channel ``ns:USER`` (or ``ns:USER/...``) is open
   to the client whose ``sub`` is ``USER`` (publishing there still follows the
   namespace's ``publish`` rule), and to nobody else;
4. ``publish = "token"`` requires the grant of step 2;
5. otherwise the namespace's ``anonymous`` rule decides: by default anyone
   may while no authentication is configured (the quick start), and nobody
   may once a JWT key or an API key is.

An authority may carry :class:`~tidings.server.hooks.Hooks`: after
``authorize()`` allowed a client's connect, read or publish, ``server/ops.py``
asks them too, so a hook can narrow what these rules allow, never widen it.

Server-wide actions (listing channels, stats, metrics) need the server
principal once authentication is configured; creating an LLM generation
needs any identity then. Jobs (``jobs.start``, ``jobs.view``,
``jobs.cancel``) are open to anyone while no authentication is configured;
then to API keys, to tokens whose ``jobs`` claim names the job (to start
it), and to anonymous clients only where ``[namespaces.jobs]`` says
``anonymous = true``; who may see or cancel a job is its owner's affair
(``server/jobs.py``). Decisions are made when a subscription or request
starts, never per delivered event.
"""

from __future__ import annotations

import fnmatch
import hmac
import http.cookies
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jwt
from starlette.types import Scope

from tidings.errors import PermissionDenied, Unauthorized
from tidings.hub.names import PUBLISH_WITH_TOKEN, NamespaceOptions, Namespaces
from tidings.server.peer import Peers

if TYPE_CHECKING:
    from tidings.server.hooks import Hooks

__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "GRANTS",
    "JOBS_CLAIM",
    "Action",
    "Authority",
    "Kind",
    "Principal",
    "TokenVerifier",
    "mint_token",
    "private_owner",
]

logger = logging.getLogger(__name__)

#: Where :meth:`Authority.principal` keeps a request's principal (``scope["state"]``).
PRINCIPAL_STATE = "tidings.principal"
#: Signature algorithms accepted with a shared secret and with a public key.
SECRET_ALGORITHMS = ("HS256",)
KEY_ALGORITHMS = ("RS256", "ES256")


class Action(StrEnum):
    """What a principal asks to do; the value names it in a refusal."""

    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    HISTORY = "history"
    PRESENCE = "presence"
    CHANNELS = "channels"
    STATS = "stats"
    METRICS = "metrics"
    LLM_CREATE = "llm.create"
    LLM_VIEW = "llm.view"
    LLM_CANCEL = "llm.cancel"
    JOBS_START = "jobs.start"
    JOBS_VIEW = "jobs.view"
    JOBS_CANCEL = "jobs.cancel"
    SESSION = "session"
    ADMIN = "admin"


#: The token claims that grant channel actions: each a list of names or patterns.
GRANTS = (Action.SUBSCRIBE, Action.PUBLISH, Action.PRESENCE, Action.HISTORY)

#: The token claim that lists the jobs a client may start: job names or patterns.
JOBS_CLAIM = "jobs"
_JOB_ACTIONS = (Action.JOBS_START, Action.JOBS_VIEW, Action.JOBS_CANCEL)

#: Which namespace option lets clients do each channel action at all.
_NAMESPACE_ALLOWS: dict[Action, Callable[[NamespaceOptions], bool]] = {
    Action.SUBSCRIBE: lambda options: options.subscribe,
    Action.HISTORY: lambda options: options.subscribe and options.history,
    Action.PUBLISH: lambda options: options.publish is not False,
    Action.PRESENCE: lambda options: options.presence,
}


class Kind(StrEnum):
    ANONYMOUS = "anonymous"
    CLIENT = "client"
    SERVER = "server"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request.

    Attributes:
        kind: anonymous, a client (a token), the server (an API key) or the
            admin (the admin key).
        sub: The token's subject (the user id), or the API key's name.
        grants: For each of :data:`GRANTS`, the channel names and patterns
            the token allows.
        expires: When the token expires (Unix seconds), or None.
    """

    kind: Kind
    sub: str | None = None
    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    expires: float | None = None

    @property
    def identity(self) -> str:
        """A stable name for ownership: ``anonymous``, ``user:SUB`` or ``key:NAME``."""
        if self.kind is Kind.CLIENT:
            return f"user:{self.sub}"
        if self.kind is Kind.SERVER:
            return f"key:{self.sub}"
        if self.kind is Kind.ADMIN:
            return "admin"
        return "anonymous"

    def granted(self, action: Action | str, channel: str) -> bool:
        """Tell whether the token grants ``action`` on ``channel`` (or, for the
        :data:`JOBS_CLAIM`, the job named ``channel``)."""
        return any(_matches(pattern, channel) for pattern in self.grants.get(action, ()))


ANONYMOUS = Principal(Kind.ANONYMOUS)
ADMIN = Principal(Kind.ADMIN, sub="admin")


@lru_cache(maxsize=4096)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _matches(pattern: str, channel: str) -> bool:
    # Channel names never contain * ? [ ], so a pattern without them is an exact name.
    if not any(char in pattern for char in "*?["):
        return pattern == channel
    return _pattern(pattern).match(channel) is not None


def private_owner(channel: str) -> str:
    """The user a channel of a private namespace belongs to: ``USER`` in ``ns:USER/...``."""
    _, _, rest = channel.partition(":")
    return rest.partition("/")[0]


# -- tokens ------------------------------------------------------------------------------------


class TokenVerifier:
    """Checks JWTs: the signature, ``exp`` and ``nbf`` always, ``aud`` and ``iss`` when set.

    Args:
        secret: Shared secret for HS256 tokens.
        key_file: A PEM public key, or a JWKS document (``{"keys": [...]}``),
            for RS256 / ES256 tokens.
        audience: The ``aud`` a token must carry, if any.
        issuer: The ``iss`` a token must carry, if any.
        leeway: Seconds of clock skew tolerated on ``exp`` and ``nbf``.

    Raises:
        ValueError: no key at all, or a key file that cannot be read (the
            message names the file, never its content).
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        key_file: str | Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        if not secret and not key_file:
            raise ValueError("a JWT secret or key file is needed")
        self._secret = secret or None
        self._public: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        if key_file:
            self._load(Path(key_file))
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = leeway

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read JWT key file {path}: {exc.strerror}") from None
        try:
            if text.lstrip().startswith("{"):
                self._jwks = jwt.PyJWKSet.from_json(text)
            else:
                self._public = text
                # Parse it now: a bad file is a start-up error, not a 401 later.
                for algorithm in KEY_ALGORITHMS:
                    try:
                        jwt.get_algorithm_by_name(algorithm).prepare_key(text)
                        break
                    except (jwt.InvalidKeyError, ValueError, TypeError):
                        continue
                else:
                    raise ValueError
        except (jwt.PyJWKError, jwt.PyJWKSetError, ValueError, TypeError):
            raise ValueError(
                f"JWT key file {path} holds no usable public key (PEM or JWKS)"
            ) from None

    def _key(self, token: str) -> tuple[Any, tuple[str, ...]]:
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if algorithm in SECRET_ALGORITHMS and self._secret:
            return self._secret, SECRET_ALGORITHMS
        if algorithm in KEY_ALGORITHMS:
            if self._public is not None:
                return self._public, KEY_ALGORITHMS
            if self._jwks is not None:
                kid = header.get("kid")
                keys = [key for key in self._jwks.keys if kid is None or key.key_id == kid]
                if len(keys) == 1:
                    return keys[0].key, KEY_ALGORITHMS
        raise Unauthorized(
            "invalid", "token signed with an algorithm or key this server does not accept"
        )

    def verify(self, token: str) -> Principal:
        """Return the client principal a token names.

        Raises:
            Unauthorized: the token is malformed, wrongly signed, expired, not
                yet valid, for another audience or issuer, or its claims are
                not of the documented shape.
        """
        try:
            key, algorithms = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("expired", "token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("not_yet_valid", "token not valid yet") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid", f"invalid token: {_jwt_reason(exc)}") from None
        return _principal(claims)


def _jwt_reason(exc: jwt.PyJWTError) -> str:
    """What was wrong with a token, in words that never quote the token."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"no {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    return "malformed"


def _principal(claims: Mapping[str, Any]) -> Principal:
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("invalid", "invalid token: 'sub' must be a non-empty string")
    grants: dict[str, tuple[str, ...]] = {}
    for claim in (*GRANTS, JOBS_CLAIM):
        patterns = claims.get(claim, [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            what = "jobs" if claim == JOBS_CLAIM else "channels"
            raise Unauthorized(
                "invalid", f"invalid token: {claim!r} must be a list of {what} or patterns"
            )
        grants[claim] = tuple(patterns)
    expires = claims.get("exp")
    return Principal(
        Kind.CLIENT, sub=sub, grants=grants, expires=float(expires) if expires else None
    )


def mint_token(
    secret: str,
    *,
    sub: str,
    ttl: float,
    grants: Mapping[str, list[str]] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """Make an HS256 token (for development, tests and ``tidings token``)."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    claims.update({action: list(patterns) for action, patterns in (grants or {}).items()})
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


# -- API keys ----------------------------------------------------------------------------------


def _find_key(keys: Mapping[str, str], presented: str) -> str | None:
    """The name of the key ``presented`` is, compared in constant time with every key."""
    found = None
    given = presented.encode()
    for name, key in keys.items():
        if hmac.compare_digest(given, key.encode()):
            found = name
    return found


# -- the authority -----------------------------------------------------------------------------


class Authority:
    """Authenticates requests and authorises every operation: the one decision point.

    Args:
        namespaces: The per-namespace rules (``NamespaceOptions``).
        verifier: Checks client tokens; None when no JWT key is configured.
        api_keys: Server keys by name.
        token_cookie: Name of a cookie to read a token from; None reads none.
        peers: Works out client addresses (trusting which proxies); by default
            the socket's peer, with ``X-Forwarded-For`` ignored.
        hooks: Asked after this authority allowed a client's connect, read
            or publish (``server/hooks.py``); None, or hooks that are all
            None, asks nothing.
        admin_key: The key of the admin principal (``Authorization: Admin
            <key>``); None: there is no admin principal.
    """

    def __init__(
        self,
        namespaces: Namespaces,
        *,
        verifier: TokenVerifier | None = None,
        api_keys: Mapping[str, str] | None = None,
        token_cookie: str | None = None,
        peers: Peers | None = None,
        hooks: Hooks | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.namespaces = namespaces
        self.hooks = hooks if hooks else None
        self.verifier = verifier
        self.api_keys = dict(api_keys or {})
        self.token_cookie = token_cookie or None
        self.peers = peers or Peers()
        self._admin_key = admin_key.encode() if admin_key else None

    @property
    def configured(self) -> bool:
        """Whether any authentication is configured (then anonymous access is opt-in)."""
        return self.verifier is not None or bool(self.api_keys)

    # -- who -------------------------------------------------------------------------------

    def peer(self, scope: Scope) -> str:
        """The client address of a request (see :mod:`tidings.server.peer`)."""
        return self.peers.address(scope)

    def principal(self, scope: Scope) -> Principal:
        """The principal of a request, authenticated once and kept in its scope.

        Raises:
            Unauthorized: a credential is present and refused.
        """
        state = scope.setdefault("state", {})
        principal = state.get(PRINCIPAL_STATE)
        if not isinstance(principal, Principal):
            principal = state[PRINCIPAL_STATE] = self.authenticate(scope)
        return principal

    def authenticate(self, scope: Scope) -> Principal:
        """Return the principal of an HTTP or WebSocket request (ASGI ``scope``).

        With no authentication configured every request is anonymous, whatever
        it sends (the OpenAI SDK, for one, always sends a bearer token). A bearer
        value that is one of the API keys is the server principal, so SDKs that
        only know ``Authorization: Bearer`` can use a key.

        ``Authorization: Admin <key>`` is the admin principal when the key is
        the admin key, and refused otherwise, whatever else is configured.

        Raises:
            Unauthorized: a credential is present and refused.
        """
        if not self.configured:
            if self._admin_key is None:
                return ANONYMOUS
            try:
                scheme, value = _credential(scope, self.token_cookie)
            except Unauthorized:
                return ANONYMOUS  # as above: with no authentication, other credentials are ignored
            return self.admin_principal(value) if scheme == "admin" else ANONYMOUS
        scheme, value = _credential(scope, self.token_cookie)
        if scheme is None:
            return ANONYMOUS
        if scheme == "admin":
            return self.admin_principal(value)
        if scheme == "key" or (self.api_keys and _find_key(self.api_keys, value)):
            return self.server_principal(value)
        return self.client_principal(value)

    def admin_principal(self, key: str) -> Principal:
        """The admin principal, if ``key`` is the admin key (compared in constant time).

        Raises:
            Unauthorized: there is no admin key, or ``key`` is not it.
        """
        if self._admin_key is None or not hmac.compare_digest(key.encode(), self._admin_key):
            raise Unauthorized("invalid", "wrong admin key")
        return ADMIN

    def client_principal(self, token: str) -> Principal:
        """The principal a token names (also used by a WebSocket ``refresh``).

        Raises:
            Unauthorized: no JWT key is configured, or the token is refused.
        """
        if self.verifier is None:
            raise Unauthorized("invalid", "this server accepts no tokens")
        return self.verifier.verify(token)

    def server_principal(self, key: str) -> Principal:
        name = _find_key(self.api_keys, key) if self.api_keys else None
        if name is None:
            raise Unauthorized("invalid", "unknown API key")
        return Principal(Kind.SERVER, sub=name)

    # -- may they --------------------------------------------------------------------------

    def authorize(
        self,
        principal: Principal,
        action: Action,
        channel: str | None = None,
        *,
        job: str | None = None,
    ) -> None:
        """Allow ``action`` (on ``channel``; for ``jobs.start``, on the job named
        ``job``) for ``principal``, or raise.

        Raises:
            Unauthorized: the action needs an identity the request does not have.
            PermissionDenied: the identity may not do it.
        """
        if action is Action.ADMIN:
            if principal.kind is not Kind.ADMIN:
                raise Unauthorized("missing", "the admin API needs Authorization: Admin <key>")
            return
        if principal.kind is Kind.SERVER:
            return
        if action in _JOB_ACTIONS:
            self._authorize_job(principal, action, job)
            return
        if principal.kind is Kind.ADMIN:
            # Test events from the admin page: wherever clients may publish at all.
            options = self.namespaces.options(channel) if channel is not None else None
            if action is Action.PUBLISH and options is not None and options.publish is not False:
                return
            raise PermissionDenied(channel or "*", action.value)
        if channel is None:
            self._authorize_server_wide(principal, action)
            return
        options = self.namespaces.options(channel)
        if not _NAMESPACE_ALLOWS[action](options):
            raise PermissionDenied(channel, action.value)
        if principal.granted(action, channel):
            return
        if options.private:
            owner = principal.kind is Kind.CLIENT and private_owner(channel) == principal.sub
            if owner and not (action is Action.PUBLISH and options.publish == PUBLISH_WITH_TOKEN):
                return
            self._refuse(principal, action, channel)
        if action is Action.PUBLISH and options.publish == PUBLISH_WITH_TOKEN:
            self._refuse(principal, action, channel)
        if self._anonymous_allowed(options):
            return
        self._refuse(principal, action, channel)

    def _authorize_server_wide(self, principal: Principal, action: Action) -> None:
        if not self.configured:
            return
        if action is Action.SESSION:
            # The token cookie holds a client's own token: a token, nothing else.
            if principal.kind is not Kind.CLIENT:
                raise Unauthorized("missing", "a session needs Authorization: Bearer <token>")
            return
        if action in (Action.LLM_CREATE, Action.LLM_VIEW, Action.LLM_CANCEL):
            # The ``llm`` namespace's ``anonymous`` rule says whether anyone may.
            llm = self.namespaces.options("llm:")
            if principal.kind is Kind.ANONYMOUS and not self._anonymous_allowed(llm):
                raise Unauthorized("missing", f"{action.value} needs a token or an API key")
            return
        self._refuse(principal, action, "*")

    def _authorize_job(self, principal: Principal, action: Action, job: str | None) -> None:
        """Jobs: anyone while no authentication is configured; then API keys, tokens
        whose ``jobs`` claim names the job (to start one; to look at or cancel
        their own, any token), and anonymous clients only where the ``jobs``
        namespace says ``anonymous = true``. The admin principal runs no jobs."""
        if principal.kind is Kind.ADMIN:
            raise PermissionDenied("*", action.value)
        if not self.configured:
            return
        if principal.kind is Kind.ANONYMOUS:
            if self._anonymous_allowed(self.namespaces.options("jobs:")):
                return
            raise Unauthorized("missing", f"{action.value} needs a token or an API key")
        if action is Action.JOBS_START and not principal.granted(JOBS_CLAIM, job or ""):
            raise PermissionDenied(job or "", action.value, what="job")

    def admits_anonymous(self) -> bool:
        """Whether an anonymous client may do anything at all: a connection
        that cannot (no namespace lets it) is refused when it opens."""
        namespaces = self.namespaces
        every = (namespaces.default, *namespaces.by_name.values())
        return any(self._anonymous_allowed(options) for options in every)

    def _anonymous_allowed(self, options: NamespaceOptions) -> bool:
        return options.anonymous if options.anonymous is not None else not self.configured

    @staticmethod
    def _refuse(principal: Principal, action: Action, channel: str) -> None:
        if principal.kind is Kind.ANONYMOUS:
            raise Unauthorized("missing", f"{action.value} on {channel!r} needs a token")
        raise PermissionDenied(channel, action.value)


# -- reading credentials -------------------------------------------------------------------------


def _credential(scope: Scope, cookie_name: str | None) -> tuple[str | None, str]:
    """The first credential of a request: ("key" | "token" | "admin", value), or (None, "")."""
    api_key = None
    cookie = None
    for name, raw in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, value = raw.decode("latin-1").strip().partition(" ")
            value = value.strip()
            if scheme.lower() == "bearer" and value:
                return "token", value
            if scheme.lower() == "apikey" and value:
                return "key", value
            if scheme.lower() == "admin" and value:
                return "admin", value
            raise Unauthorized(
                "invalid", "the Authorization header must be 'Bearer …', 'ApiKey …' or 'Admin …'"
            )
        if name == b"x-api-key":
            api_key = raw.decode("latin-1").strip()
        elif name == b"cookie" and cookie_name:
            cookie = raw.decode("latin-1")
    if api_key:
        return "key", api_key
    query = scope.get("query_string", b"")
    if b"token=" in query:
        for key, value in parse_qsl(query.decode("latin-1")):
            if key == "token" and value:
                return "token", value
    if cookie and cookie_name:
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(cookie)
        except http.cookies.CookieError:
            return None, ""
        if cookie_name in jar and jar[cookie_name].value:
            return "token", jar[cookie_name].value
    return None, ""
