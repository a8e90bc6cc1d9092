"""Settings: defaults < TOML file < ``TIDINGS_*`` environment variables.

One frozen :class:`Settings` object, loaded once by :func:`load_settings` and
read by ``server/`` and the CLI only; the hub takes plain values. Every field
is documented in ``docs/reference/settings.md``.

A TOML file holds the fields at the top level and namespaces in tables::

    port = 8080
    history_size = 500

    [namespaces.chat]
    history_size = 100
    publish = false

    [llm.providers.local]
    kind = "openai"
    base_url = "http://127.0.0.1:11434/v1"

Each top-level field can be overridden by an environment variable named
``TIDINGS_`` + the field name in capitals (``TIDINGS_PORT=8080``); each
scalar of the ``[llm]`` table by ``TIDINGS_LLM_`` + its name
(``TIDINGS_LLM_BASE_URL``, ``TIDINGS_LLM_GRACE``). The ``[llm]`` table is
read once, by :func:`load_settings`, into ``Settings.llm`` (an ``LLMConfig``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tidings.hub.backends.memory import DEFAULT_HISTORY_TOTAL_BYTES
from tidings.hub.names import DEFAULT_HISTORY_MAX_BYTES, NamespaceOptions, Namespaces
from tidings.hub.subscription import OverflowPolicy
from tidings.llm.config import LLMConfig
from tidings.types import kind_name, parse_scalar, unknown_setting

__all__ = ["Settings", "SettingsError", "load_settings"]

ENV_PREFIX = "TIDINGS_"
LLM_ENV_PREFIX = "TIDINGS_LLM_"
#: Shortest accepted ``jwt_secret`` (HS256 wants a key as long as its hash).
MIN_SECRET_BYTES = 32
#: Most header lines a request may have (``max_headers``): websockets' handshake parser's limit.
MAX_HEADERS = 128
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+\Z")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
BACKENDS = ("memory", "redis")
#: Values of ``sse_compression`` and ``ws_compression`` (docs/operations.md, "Compression").
SSE_COMPRESSIONS = ("off", "gzip")
WS_COMPRESSIONS = ("off", "deflate")
#: The byte bound of each ``llm:`` channel's history unless ``[namespaces.llm]`` sets one.
LLM_HISTORY_MAX_BYTES = 64 * 1024 * 1024
#: An HTTP header name (RFC 9110 token), as ``proxy_headers`` lists them.
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+\Z")
#: Headers of the proxy's own request, which no client may set.
_NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "expect",
    }
)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Default bound of one answer (history, presence, channel list): 1 MiB.
DEFAULT_MAX_REPLY_BYTES = 1024 * 1024
#: Smallest accepted ``max_reply_bytes``.
MIN_REPLY_BYTES = 1024
#: Default bound of a connection's presence ``info`` (its JSON): 1 KiB.
DEFAULT_PRESENCE_INFO_MAX_BYTES = 1024


class SettingsError(ValueError):
    """A setting has a value Tidings cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a Tidings server (see ``docs/reference/settings.md``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tidings:"
    history_size: int = 1000
    history_ttl: float = 300.0
    idempotency_window: float = 300.0
    outbox_max_bytes: int = 1024 * 1024
    overflow: str = "disconnect"
    sse_retry: float = 3.0
    sse_keepalive: float = 15.0
    # Compression (docs/operations.md): gzip for SSE when the client accepts it,
    # permessage-deflate for WebSockets when the client offers it.
    sse_compression: str = "off"
    ws_compression: str = "off"
    max_body_bytes: int = 64 * 1024
    max_channels: int = 64
    ws_ping_interval: float = 20.0
    ws_pong_timeout: float = 20.0
    ws_max_frame_bytes: int = 64 * 1024
    ws_rate_limit: float = 100.0
    presence_ttl: float = 60.0
    fast_write: bool = True
    demo: bool = True
    jwt_secret: str = field(default="", repr=False)
    jwt_key_file: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway: float = 0.0
    token_cookie: str = ""
    token_cookie_samesite: str = "strict"
    token_cookie_secure: bool = True
    api_keys: str = field(default="", repr=False)
    cors_origins: str = ""
    cors_credentials: bool = False
    allow_anonymous: bool = False
    # Client addresses: proxies whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    # HTTP/2: TLS on Hypercorn instead of uvicorn (server/serve_h2.py).
    http2: bool = False
    certfile: str = ""
    keyfile: str = ""
    # Publish rates: token buckets (publishes per second, 0 = no limit) per WebSocket
    # connection, per client address and per token subject; API keys are exempt.
    publish_rate_per_connection: float = 100.0
    publish_rate_per_address: float = 1000.0
    publish_rate_per_principal: float = 1000.0
    publish_burst: float = 2.0
    publish_rate_clients: int = 100_000
    # Memory bounds: history in bytes, reply sizes, presence info.
    history_max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    history_total_bytes: int = DEFAULT_HISTORY_TOTAL_BYTES
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    presence_info_max_bytes: int = DEFAULT_PRESENCE_INFO_MAX_BYTES
    # Connections: sizes of a request head, deadlines, how many at once.
    max_url_bytes: int = 16 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    ws_handshake_timeout: float = 10.0
    idle_timeout: float = 5.0
    max_connections: int = 10_000
    max_connections_per_client: int = 500
    # Operations: readiness deadline and logs (docs/operations.md).
    ready_timeout: float = 1.0
    log_format: str = "text"
    access_log_streams: bool = False
    # Drain: how long a stopping server gives its connections and generations
    # (docs/operations.md, "Drain").
    drain_timeout: float = 30.0
    # Pages of your own at / (docs/howto/hooks.md).
    static_dir: str = ""
    # Hooks: how long an on_connect / on_subscribe / on_publish callable may take,
    # and the proxy hooks that POST to the user's backend (docs/howto/hooks.md).
    hook_timeout: float = 3.0
    proxy_connect_url: str = ""
    proxy_subscribe_url: str = ""
    proxy_publish_url: str = ""
    proxy_complete_url: str = ""
    proxy_timeout: float = 3.0
    proxy_headers: str = ""
    proxy_max_body_bytes: int = 64 * 1024
    proxy_max_connections: int = 100
    # Jobs (docs/jobs.md): workers, waiting jobs, job records kept and for how long.
    jobs_workers: int = 4
    jobs_queue: int = 100
    jobs_per_client: int = 16
    jobs_max: int = 1000
    jobs_ttl: float = 3600.0
    # The admin page /admin: off (404) unless set (docs/operations.md, "Admin page").
    admin_key: str = field(default="", repr=False)
    namespaces: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    llm: LLMConfig = field(default_factory=lambda: LLMConfig.from_table({}))

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, not {self.port}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.backend not in BACKENDS:
            raise SettingsError(
                f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}"
            )
        # The URL may hold a password: the message names the setting, never the value.
        redis_url = urlsplit(self.redis_url)
        if redis_url.scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(
                "redis_url must start with redis://, rediss:// or unix:// "
                "(e.g. redis://127.0.0.1:6379/0)"
            )
        try:
            _ = redis_url.port
        except ValueError:
            raise SettingsError("redis_url has a port that is not a number 0-65535") from None
        if self.overflow not in {policy.value for policy in OverflowPolicy}:
            raise SettingsError(f"overflow must be 'disconnect' or 'drop', not {self.overflow!r}")
        for name in ("outbox_max_bytes", "max_body_bytes", "max_channels", "ws_max_frame_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        for name in (
            "sse_retry",
            "sse_keepalive",
            "history_ttl",
            "idempotency_window",
            "ws_ping_interval",
            "ws_pong_timeout",
            "presence_ttl",
            "drain_timeout",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0 seconds")
        for name in ("max_url_bytes", "max_header_bytes", "max_connections"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        if not 1 <= self.max_headers <= MAX_HEADERS:
            # The WebSocket handshake is parsed again by websockets, which stops at 128.
            raise SettingsError(f"max_headers must be 1-{MAX_HEADERS}, not {self.max_headers}")
        if self.max_connections_per_client < 0:
            raise SettingsError("max_connections_per_client must be >= 0 (0: no limit)")
        for name in ("header_timeout", "body_timeout", "ws_handshake_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0 seconds")
        if self.ws_rate_limit <= 0:
            raise SettingsError("ws_rate_limit must be > 0 commands per second")
        for name in (
            "publish_rate_per_connection",
            "publish_rate_per_address",
            "publish_rate_per_principal",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0 publishes per second (0: no limit)")
        if self.publish_burst <= 0:
            raise SettingsError("publish_burst must be > 0 seconds")
        if self.publish_rate_clients <= 0:
            raise SettingsError("publish_rate_clients must be > 0")
        if self.history_size < 0:
            raise SettingsError("history_size must be >= 0")
        self._check_memory_bounds()
        if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.token_cookie_samesite not in ("strict", "lax", "none"):
            raise SettingsError("token_cookie_samesite must be 'strict', 'lax' or 'none'")
        if self.token_cookie_samesite == "none" and not self.token_cookie_secure:
            raise SettingsError("token_cookie_samesite = 'none' needs token_cookie_secure")
        if self.jwt_leeway < 0:
            raise SettingsError("jwt_leeway must be >= 0 seconds")
        self.api_key_map()
        self.cors_origin_list()
        self.trusted_networks()
        self._check_http2()
        self._check_operations()
        self._check_hooks()
        self._check_jobs()
        if not isinstance(self.llm, LLMConfig):
            raise SettingsError("llm must be an LLMConfig (LLMConfig.from_table reads a table)")
        self.namespace_options()  # refuse bad namespace tables now, not at first use

    def _check_http2(self) -> None:
        if self.http2 and not (self.certfile and self.keyfile):
            raise SettingsError("http2 needs certfile and keyfile: HTTP/2 is served over TLS only")
        if not self.http2 and (self.certfile or self.keyfile):
            raise SettingsError(
                "certfile and keyfile are used with http2 only; without it, terminate TLS "
                "in a proxy in front of Tidings"
            )

    def _check_memory_bounds(self) -> None:
        if self.history_max_bytes < 0:
            raise SettingsError("history_max_bytes must be >= 0")
        for name in ("history_total_bytes", "max_reply_bytes", "presence_info_max_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        if self.max_reply_bytes < MIN_REPLY_BYTES:
            raise SettingsError(f"max_reply_bytes must be at least {MIN_REPLY_BYTES}")

    def _check_operations(self) -> None:
        if self.admin_key and len(self.admin_key.strip()) < MIN_SECRET_BYTES // 2:
            # Never the value: it is a secret.
            raise SettingsError(f"admin_key must be at least {MIN_SECRET_BYTES // 2} characters")
        if self.admin_key != self.admin_key.strip():
            raise SettingsError("admin_key must not start or end with white space")
        if self.ready_timeout <= 0:
            raise SettingsError("ready_timeout must be > 0 seconds")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}"
            )
        for name, choices in (
            ("sse_compression", SSE_COMPRESSIONS),
            ("ws_compression", WS_COMPRESSIONS),
        ):
            if getattr(self, name) not in choices:
                raise SettingsError(
                    f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}"
                )

    def _check_hooks(self) -> None:
        for name in ("hook_timeout", "proxy_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0 seconds")
        for name in ("proxy_max_body_bytes", "proxy_max_connections"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        for name, url in self.proxy_urls().items():
            # The URL may hold a password: the message names the setting, never the value.
            try:
                parts = urlsplit(url)
                valid = parts.scheme in ("http", "https") and bool(parts.hostname)
                _ = parts.port
            except ValueError:
                valid = False
            if not valid:
                raise SettingsError(f"{name} must be an http:// or https:// URL with a host")
        self.proxy_header_names()

    def _check_jobs(self) -> None:
        for name in ("jobs_workers", "jobs_queue", "jobs_per_client"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        if self.jobs_max < self.jobs_workers + self.jobs_queue:
            raise SettingsError("jobs_max must be at least jobs_workers + jobs_queue")
        if self.jobs_ttl <= 0:
            raise SettingsError("jobs_ttl must be > 0 seconds")

    def proxy_urls(self) -> dict[str, str]:
        """The proxy hook URLs that are set, by setting name."""
        names = (
            "proxy_connect_url",
            "proxy_subscribe_url",
            "proxy_publish_url",
            "proxy_complete_url",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name)}

    def proxy_header_names(self) -> tuple[str, ...]:
        """The request headers ``proxy_headers`` passes on to the proxy hooks (lower case)."""
        names: list[str] = []
        entries = filter(None, map(str.strip, self.proxy_headers.split(",")))
        for place, entry in enumerate(entries, 1):
            name = entry.lower()
            if not _HEADER_NAME.match(name):
                raise SettingsError(f"proxy_headers: entry {place} is not a header name")
            if name in _NOT_FORWARDED:
                raise SettingsError(
                    f"proxy_headers: {name} describes the request to the backend itself; "
                    "it cannot be passed on"
                )
            if name not in names:
                names.append(name)
        return tuple(names)

    @property
    def authentication(self) -> bool:
        """Whether any authentication (a JWT key or an API key) is configured."""
        return bool(self.jwt_secret or self.jwt_key_file or self.api_keys)

    def api_key_map(self) -> dict[str, str]:
        """The server API keys by name: ``api_keys`` is ``name:key,name:key`` (a bare
        ``key`` is named ``key1``, ``key2`` … by its place)."""
        keys: dict[str, str] = {}
        for place, entry in enumerate(filter(None, map(str.strip, self.api_keys.split(","))), 1):
            name, colon, key = entry.partition(":")
            if not colon:
                name, key = f"key{place}", entry
            name, key = name.strip(), key.strip()
            if len(key) < MIN_SECRET_BYTES // 2:
                raise SettingsError(
                    f"api_keys: key {place} must be at least {MIN_SECRET_BYTES // 2} characters"
                )
            if not name or name in keys:
                raise SettingsError(f"api_keys: key {place} needs a name of its own")
            keys[name] = key
        return keys

    def cors_origin_list(self) -> list[str]:
        """The origins ``cors_origins`` allows (``*`` for any), each ``scheme://host[:port]``."""
        origins = [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]
        for place, origin in enumerate(origins, 1):
            if origin != "*" and not _ORIGIN.match(origin):
                raise SettingsError(
                    f"cors_origins: entry {place} must be '*' or scheme://host[:port]"
                )
        if "*" in origins and self.cors_credentials:
            raise SettingsError("cors_credentials cannot be used with cors_origins = '*'")
        return origins

    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        """The proxies ``trusted_proxies`` names: addresses and CIDR networks."""
        networks = []
        entries = filter(None, map(str.strip, self.trusted_proxies.split(",")))
        for place, entry in enumerate(entries, 1):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise SettingsError(
                    f"trusted_proxies: entry {place} is not an IP address or network"
                ) from None
        return tuple(networks)

    def namespace_options(self) -> Namespaces:
        """Build the hub's per-namespace options from these settings."""
        default = NamespaceOptions(
            history_size=self.history_size,
            history_ttl=self.history_ttl,
            history_max_bytes=self.history_max_bytes,
        )
        allowed = {f.name for f in fields(NamespaceOptions)}
        # Job events are published by the server only, and kept as long as the job's record.
        jobs = dataclasses.replace(default, history_ttl=self.jobs_ttl, publish=False)
        by_name = {"jobs": jobs}
        if self.demo:
            # The chat demo's rooms announce who joins and leaves; its typing
            # notices are ephemeral. A [namespaces.room] or [namespaces.typing]
            # table changes them like any other namespace.
            by_name["room"] = dataclasses.replace(default, join_leave=True)
            by_name["typing"] = dataclasses.replace(default, history_size=0)
        # Job records with their owners, and cancels, between the servers of one
        # backend: for the servers only, the latest record of each job.
        jobstate = dataclasses.replace(
            default,
            history_size=1,
            history_ttl=self.jobs_ttl,
            **dict.fromkeys(("publish", "subscribe", "history", "presence"), False),
        )
        for name, table in self.namespaces.items():
            if not isinstance(table, Mapping):
                raise SettingsError(f"namespaces.{name} must be a table")
            for key in sorted(table):
                if key not in allowed:
                    prefix = f"namespaces.{name}."
                    raise SettingsError(unknown_setting(key, allowed, prefix=prefix))
                _check_kind(f"namespaces.{name}.{key}", table[key], _NAMESPACE_KINDS.get(key))
            try:
                by_name[name] = dataclasses.replace(by_name.get(name, default), **table)
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"namespaces.{name}: {exc}") from exc
        if "llm" not in by_name:
            # Generations are published by the server only, and kept whole for their TTL.
            # With authentication, clients reach them only through /v1/streams/{id},
            # which checks the owner: the channel endpoints must not be a way around it.
            closed = self.authentication
            by_name["llm"] = NamespaceOptions(
                history_size=self.llm.history_size,
                history_ttl=self.llm.ttl,
                # Room for a whole generation of llm.history_size chunks (about 350
                # bytes each, counted with their overhead), still under the total bound.
                history_max_bytes=max(self.history_max_bytes, LLM_HISTORY_MAX_BYTES),
                publish=False,
                subscribe=not closed,
                history=not closed,
                presence=not closed,
            )
        by_name["jobstate"] = jobstate  # not configurable: it holds who owns each job
        try:
            return Namespaces(default=default, by_name=by_name)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc


_FIELDS = {f.name: f for f in fields(Settings)}
_SCALAR_TYPES: dict[str, type] = {
    name: {"int": int, "float": float, "bool": bool, "str": str}[str(f.type)]
    for name, f in _FIELDS.items()
    if name not in ("namespaces", "llm")
}


#: The kinds of the number fields of a ``[namespaces.NAME]`` table (TOML gives
#: the others' kinds; NamespaceOptions checks their values).
_NAMESPACE_KINDS: dict[str, type] = {
    "history_size": int,
    "history_ttl": float,
    "history_max_bytes": int,
}


def _convert(name: str, value: Any, source: str) -> Any:
    kind = _SCALAR_TYPES[name]
    try:
        return parse_scalar(value, kind)
    except ValueError:
        # Never the value: it may be a secret (jwt_secret, api_keys).
        raise SettingsError(f"{source}: {name} must be {kind_name(kind)}") from None


def _check_kind(name: str, value: Any, kind: type | None) -> None:
    """Refuse a namespace number of the wrong kind (a TOML value: never a string to parse)."""
    if kind is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
        raise SettingsError(f"{name} must be {kind_name(kind)}")


def _llm(table: Mapping[str, Any]) -> LLMConfig:
    """Read the ``[llm]`` table; the error names the setting, never its value (it may be a key)."""
    try:
        return LLMConfig.from_table(table)
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from exc


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Load settings: defaults, then the TOML file at ``path``, then the environment.

    ``overrides`` (command-line flags) win over everything; a ``None`` value
    means "not given". ``TIDINGS_CONFIG`` names the file when ``path`` is None.

    Raises:
        SettingsError: an unknown setting, a value of the wrong type, a file
            that is missing or not valid TOML.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    if path is not None:
        source = str(path)
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read settings file {source}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{source} is not valid TOML: {exc}") from exc
        for name, value in document.items():
            if name not in _FIELDS:
                raise SettingsError(f"{source}: {unknown_setting(name, _FIELDS)}")
            if name in ("namespaces", "llm"):
                if not isinstance(value, dict):
                    raise SettingsError(f"{source}: {name} must be a table")
                values[name] = value
            else:
                values[name] = _convert(name, value, source)
    for name in _SCALAR_TYPES:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw, ENV_PREFIX + name.upper())
    llm_env = {
        key[len(LLM_ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(LLM_ENV_PREFIX)
    }
    if llm_env:
        values["llm"] = {**values.get("llm", {}), **llm_env}
    for name, value in overrides.items():
        if name not in _FIELDS:
            raise SettingsError(unknown_setting(name, _FIELDS))
        if value is not None:
            values[name] = _convert(name, value, "command line") if name in _SCALAR_TYPES else value
    if isinstance(values.get("llm"), Mapping):
        values["llm"] = _llm(values["llm"])
    return Settings(**values)
