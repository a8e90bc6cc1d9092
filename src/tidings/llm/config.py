"""LLMConfig: the ``[llm]`` settings table, read into values, and the provider router.

::

    [llm]
    grace = 10.0                       # seconds a generation may go unheard
    lease = 10.0                       # seconds before a dead server's generation is lost
    default_provider = "local"

    [llm.providers.local]
    kind = "openai"                    # or "anthropic", "demo"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = "OLLAMA_API_KEY"     # or api_key = "..."

    [llm.models]
    "gpt-*" = "openai"                 # model name (glob) -> provider
    "llama3.2" = "local"

``TIDINGS_LLM_BASE_URL`` (with ``TIDINGS_LLM_API_KEY``) defines a provider
named ``upstream`` of kind ``openai`` and makes it the default; every other
scalar of the table is ``TIDINGS_LLM_`` + its name in capitals.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tidings.errors import ModelNotFound, UpstreamError
from tidings.llm.providers.base import Provider, display_url
from tidings.llm.providers.demo import DemoProvider
from tidings.llm.request import RequestLimits
from tidings.types import kind_name, parse_scalar, unknown_setting

__all__ = ["LLMConfig", "ProviderConfig", "ProviderRouter"]

logger = logging.getLogger(__name__)

PROVIDER_KINDS = ("anthropic", "demo", "openai")
#: Bounds of ``lease``: renewed every third of it, it must leave the backend time to answer.
MIN_LEASE = 0.1
MAX_LEASE = 3600.0
#: RFC 9110 field names (tokens) and values (visible ASCII, spaces and tabs).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")
_PROVIDER_FIELDS = {
    "kind": str,
    "base_url": str,
    "api_key": str,
    "api_key_env": str,
    "timeout": float,
    "connect_timeout": float,
    "model": str,
    "headers": dict,
    "models": list,
    "max_tokens": int,
    "first_token_delay": float,
    "token_interval": float,
}
_SCALARS: dict[str, type] = {
    "enabled": bool,
    "default_provider": str,
    "grace": float,
    "lease": float,
    "cancel_unheard": bool,
    "ttl": float,
    "history_size": int,
    "max_generations": int,
    "max_generations_per_client": int,
    "max_messages": int,
    "max_tokens": int,
    "max_body_bytes": int,
    "base_url": str,
    "api_key": str,
}


def _convert(name: str, value: Any, kind: type) -> Any:
    if kind is dict:
        if not isinstance(value, Mapping) or not all(
            isinstance(key, str) and isinstance(item, str) for key, item in value.items()
        ):
            raise ValueError(f"llm.{name} must be a table of strings")
        return dict(value)
    if kind is list:
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"llm.{name} must be a list of strings")
        return tuple(value)
    try:
        return parse_scalar(value, kind)
    except ValueError:
        # The value is left out on purpose: it may be an API key or a header.
        raise ValueError(f"llm.{name} must be {kind_name(kind)}") from None


@dataclass(frozen=True, slots=True, repr=False)
class ProviderConfig:
    """One ``[llm.providers.NAME]`` table.

    Its ``repr()`` shows the base URL without credentials and never the key
    or the headers.
    """

    name: str
    kind: str = "openai"
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    api_key_env: str = ""
    timeout: float = 60.0
    connect_timeout: float = 10.0
    model: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    models: tuple[str, ...] | None = None
    max_tokens: int = 4096
    first_token_delay: float = 0.3
    token_interval: float = 0.04

    def __post_init__(self) -> None:
        if self.kind not in PROVIDER_KINDS:
            raise ValueError(
                f"llm.providers.{self.name}.kind must be one of {', '.join(PROVIDER_KINDS)}"
            )
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"llm.providers.{self.name}.base_url must be an http(s) URL")
        anthropic = self.kind == "anthropic"
        if anthropic and self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"llm.providers.{self.name}.base_url must be an http(s) URL")
        if self.models is not None and not anthropic:
            raise ValueError(f"llm.providers.{self.name}.models is only for kind anthropic")
        if self.max_tokens <= 0:
            raise ValueError(f"llm.providers.{self.name}.max_tokens must be > 0")
        # Checked now, naming the field: httpx would fail later, quoting the value.
        if not _HEADER_VALUE.match(self.api_key):
            raise ValueError(
                f"llm.providers.{self.name}.api_key must be printable ASCII on one line"
            )
        for header, value in self.headers.items():
            if not _HEADER_NAME.match(header):
                raise ValueError(f"llm.providers.{self.name}.headers has an invalid header name")
            if not _HEADER_VALUE.match(value):
                raise ValueError(
                    f"llm.providers.{self.name}.headers.{header} must be printable ASCII "
                    "on one line"
                )
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError(f"llm.providers.{self.name}: timeouts must be > 0 seconds")
        if self.first_token_delay < 0 or self.token_interval < 0:
            raise ValueError(f"llm.providers.{self.name}: demo delays must be >= 0 seconds")

    def __repr__(self) -> str:
        url = f", base_url={display_url(self.base_url)!r}" if self.base_url else ""
        return f"ProviderConfig({self.name!r}, kind={self.kind!r}{url})"

    def build(self, env: Mapping[str, str] | None = None) -> Provider:
        """Create the provider (the API key is read from ``api_key_env`` now)."""
        if self.kind == "demo":
            return DemoProvider(
                name=self.name,
                first_token_delay=self.first_token_delay,
                token_interval=self.token_interval,
            )
        env = os.environ if env is None else env
        api_key = self.api_key or (env.get(self.api_key_env, "") if self.api_key_env else "")
        if not _HEADER_VALUE.match(api_key):
            raise ValueError(
                f"llm.providers.{self.name}.api_key_env names a variable that is not "
                "printable ASCII on one line"
            )
        if self.kind == "anthropic":
            # Imported on demand, like the OpenAI provider: they need httpx.
            from tidings.llm.providers.anthropic import DEFAULT_BASE_URL, AnthropicProvider

            return AnthropicProvider(
                self.base_url or DEFAULT_BASE_URL,
                name=self.name,
                api_key=api_key,
                max_tokens=self.max_tokens,
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
                headers=self.headers,
                model=self.model or None,
                models=self.models,
            )
        from tidings.llm.providers.openai import OpenAIProvider

        return OpenAIProvider(
            self.base_url,
            name=self.name,
            api_key=api_key,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            headers=self.headers,
            model=self.model or None,
        )


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """The LLM relay's settings (see ``docs/reference/settings.md``, ``[llm]``)."""

    enabled: bool = True
    default_provider: str = "demo"
    grace: float = 10.0
    lease: float = 10.0
    cancel_unheard: bool = True
    ttl: float = 600.0
    history_size: int = 100_000
    max_generations: int = 256
    max_generations_per_client: int = 32
    max_messages: int = 1024
    max_tokens: int = 32768
    max_body_bytes: int = 1024 * 1024
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grace < 0:
            raise ValueError("llm.grace must be >= 0 seconds")
        if self.ttl <= 0:
            raise ValueError("llm.ttl must be > 0 seconds")
        if not MIN_LEASE <= self.lease <= MAX_LEASE:
            raise ValueError(
                f"llm.lease must be {MIN_LEASE:g} to {MAX_LEASE:g} seconds, not {self.lease!r}"
            )
        for name in (
            "history_size",
            "max_generations",
            "max_generations_per_client",
            "max_messages",
            "max_tokens",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"llm.{name} must be > 0")
        if self.max_body_bytes <= 0:
            raise ValueError("llm.max_body_bytes must be > 0")
        known = set(self.providers) | {"demo"}
        if self.default_provider and self.default_provider not in known:
            raise ValueError(f"llm.default_provider names no provider: {self.default_provider!r}")
        for pattern, provider in self.models.items():
            if provider not in known:
                raise ValueError(f"llm.models.{pattern} names no provider: {provider!r}")

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(
            max_messages=self.max_messages, max_tokens=self.max_tokens, max_grace=self.ttl
        )

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> LLMConfig:
        """Read an ``[llm]`` table (values from TOML, or strings from the environment).

        Raises:
            ValueError: an unknown key or a value of the wrong type; the message names it.
        """
        values: dict[str, Any] = {}
        for name, value in table.items():
            if name in ("providers", "models"):
                continue
            if name not in _SCALARS:
                known = [*_SCALARS, "providers", "models"]
                raise ValueError(unknown_setting(name, known, prefix="llm."))
            values[name] = _convert(name, value, _SCALARS[name])
        providers = {
            name: _provider(name, spec) for name, spec in _table(table, "providers").items()
        }
        base_url = values.pop("base_url", "")
        api_key = values.pop("api_key", "")
        if base_url:
            providers["upstream"] = ProviderConfig("upstream", base_url=base_url, api_key=api_key)
            values.setdefault("default_provider", "upstream")
        providers.setdefault("demo", ProviderConfig("demo", kind="demo"))
        models = _table(table, "models")
        for pattern, provider in models.items():
            if not isinstance(provider, str):
                raise ValueError(f"llm.models.{pattern} must be a provider name")
        return cls(providers=providers, models=dict(models), **values)

    def router(self, env: Mapping[str, str] | None = None) -> ProviderRouter:
        """Build every provider and the model-name router over them."""
        providers = {name: spec.build(env) for name, spec in self.providers.items()}
        if "demo" not in providers:
            providers["demo"] = DemoProvider()
        return ProviderRouter(providers, self.models, default=self.default_provider)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _table(table: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = table.get(name, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"llm.{name} must be a table")
    return value


def _provider(name: str, spec: object) -> ProviderConfig:
    if not isinstance(spec, Mapping):
        raise ValueError(f"llm.providers.{name} must be a table")
    values: dict[str, Any] = {}
    for key, value in spec.items():
        kind = _PROVIDER_FIELDS.get(key)
        if kind is None:
            prefix = f"llm.providers.{name}."
            raise ValueError(unknown_setting(key, _PROVIDER_FIELDS, prefix=prefix))
        values[key] = _convert(f"providers.{name}.{key}", value, kind)
    return ProviderConfig(name, **values)


class ProviderRouter:
    """Picks the provider for a model name: exact name, then glob, then the default.

    The client names a model, never an upstream: a model that no entry
    matches, when there is no default (``default=""``), is refused.
    """

    def __init__(
        self, providers: Mapping[str, Provider], models: Mapping[str, str], *, default: str
    ) -> None:
        self.providers = dict(providers)
        self.models = dict(models)
        self.default = default

    def provider_for(self, model: str) -> Provider:
        """The provider that serves ``model``.

        Raises:
            ModelNotFound: no route matches ``model`` (``param`` is ``model``).
        """
        name = self.models.get(model)
        if name is None:
            matches = (
                target
                for pattern, target in self.models.items()
                if fnmatch.fnmatchcase(model, pattern)
            )
            name = next(matches, self.default)
        provider = self.providers.get(name)
        if provider is None:
            raise ModelNotFound(f"the model {model[:80]!r} does not exist here", param="model")
        return provider

    async def list_models(self, *, wait: float = 5.0) -> dict[str, str]:
        """Every model name that routes somewhere, mapped to its provider's name.

        Names come from ``[llm.models]`` (exact ones, not globs) and from each
        provider's own list, kept when this router sends that name to that
        provider. A provider that fails or does not answer in ``wait``
        seconds contributes nothing (and is logged).
        """
        names = {name: self.models[name] for name in self.models if not _is_glob(name)}

        async def listed(provider: Provider) -> list[str]:
            try:
                async with asyncio.timeout(wait):
                    return await provider.models()
            except (TimeoutError, UpstreamError) as exc:
                logger.warning("provider %s did not list its models: %s", provider.name, exc)
                return []

        providers = list(self.providers.values())
        for provider, found in zip(
            providers, await asyncio.gather(*(listed(p) for p in providers)), strict=True
        ):
            for name in found:
                if self._routes(name, provider):
                    names.setdefault(name, provider.name)
        return dict(sorted(names.items()))

    def _routes(self, model: str, provider: Provider) -> bool:
        """Whether ``model`` goes to ``provider`` (a model that goes nowhere does not)."""
        try:
            return self.provider_for(model) is provider
        except ModelNotFound:
            return False

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
