"""llm/config.py: the [llm] table, providers, and model routing."""

from __future__ import annotations

import asyncio

import pytest

from tidings.errors import ModelNotFound, UpstreamError
from tidings.llm.config import LLMConfig, ProviderRouter
from tidings.llm.providers.demo import DemoProvider
from tidings.llm.providers.openai import OpenAIProvider


def test_defaults_use_the_demo_provider() -> None:
    config = LLMConfig.from_table({})
    assert config.default_provider == "demo"
    assert set(config.providers) == {"demo"}
    assert (config.grace, config.cancel_unheard, config.ttl) == (10.0, True, 600.0)


def test_base_url_defines_the_default_upstream() -> None:
    config = LLMConfig.from_table({"base_url": "http://127.0.0.1:9/v1", "api_key": "k"})
    assert config.default_provider == "upstream"
    assert config.providers["upstream"].api_key == "k"


def test_environment_strings_are_converted() -> None:
    config = LLMConfig.from_table({"grace": "2.5", "cancel_unheard": "false", "max_tokens": "9"})
    assert (config.grace, config.cancel_unheard, config.max_tokens) == (2.5, False, 9)


async def test_models_route_by_name_then_glob_then_default() -> None:
    config = LLMConfig.from_table(
        {
            "default_provider": "demo",
            "providers": {
                "cloud": {"kind": "openai", "base_url": "https://api.example/v1"},
                "local": {"kind": "openai", "base_url": "http://127.0.0.1:11434/v1"},
            },
            "models": {"gpt-*": "cloud", "llama3.2": "local", "llama*": "cloud"},
        }
    )
    router = config.router(env={})
    try:
        assert router.provider_for("gpt-4o").name == "cloud"
        assert router.provider_for("llama3.2").name == "local"
        assert router.provider_for("llama2").name == "cloud"
        assert isinstance(router.provider_for("other"), DemoProvider)
        assert isinstance(router.provider_for("gpt-4o"), OpenAIProvider)
    finally:
        await router.aclose()


async def test_api_key_from_the_environment() -> None:
    config = LLMConfig.from_table(
        {"providers": {"p": {"base_url": "http://h/v1", "api_key_env": "MY_KEY"}}}
    )
    router = config.router(env={"MY_KEY": "secret"})
    try:
        provider = router.providers["p"]
        assert isinstance(provider, OpenAIProvider)
        assert provider._client.headers["authorization"] == "Bearer secret"
    finally:
        await router.aclose()


async def test_provider_headers_are_sent_upstream() -> None:
    table = {"providers": {"p": {"base_url": "http://h/v1", "headers": {"x-team": "blue"}}}}
    config = LLMConfig.from_table(table)
    assert config.providers["p"].headers == {"x-team": "blue"}
    router = config.router(env={})
    try:
        provider = router.providers["p"]
        assert isinstance(provider, OpenAIProvider)
        assert provider._client.headers["x-team"] == "blue"
    finally:
        await router.aclose()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"nope": 1}, r"unknown setting 'llm\.nope'; known: api_key, base_url, "),
        ({"grase": 1}, r"unknown setting 'llm\.grase'; did you mean 'llm\.grace'\?"),
        ({"grace": -1}, "grace must be >= 0"),
        ({"grace": "soon"}, r"llm\.grace must be a number\Z"),
        ({"history_size": 1.5}, r"llm\.history_size must be an integer\Z"),
        ({"ttl": 0}, "ttl must be > 0"),
        ({"max_generations": 0}, "max_generations must be > 0"),
        ({"default_provider": "ghost"}, "default_provider names no provider"),
        ({"models": {"m": "ghost"}}, "llm.models.m names no provider"),
        ({"models": {"m": 1}}, "must be a provider name"),
        ({"providers": {"p": {"kind": "magic"}}}, "kind must be one of"),
        ({"providers": {"p": {"base_url": "ftp://x"}}}, "base_url must be an http"),
        ({"providers": {"p": {"base_url": "http://x", "colour": 1}}}, "unknown setting"),
        ({"providers": {"p": {"base_url": "http://x", "timeout": 0}}}, "timeouts must be > 0"),
        ({"providers": {"p": 3}}, "must be a table"),
        ({"providers": {"a": {"kind": "anthropic", "base_url": "x"}}}, "a.base_url must be an"),
        ({"providers": {"a": {"kind": "anthropic", "max_tokens": 0}}}, "a.max_tokens must be > 0"),
        ({"providers": {"a": {"kind": "anthropic", "models": "m"}}}, "a.models must be a list"),
        ({"providers": {"a": {"kind": "anthropic", "models": [1]}}}, "a.models must be a list"),
        ({"providers": {"o": {"base_url": "http://x", "models": []}}}, "only for kind anthropic"),
        ({"providers": 3}, "llm.providers must be a table"),
    ],
)
def test_bad_tables_are_refused_with_the_setting_named(
    table: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LLMConfig.from_table(table)


async def test_router_closes_every_provider() -> None:
    closed = []

    class Recording(DemoProvider):
        async def aclose(self) -> None:
            closed.append(self.name)

    router = ProviderRouter({"a": Recording(name="a"), "b": Recording(name="b")}, {}, default="a")
    await router.aclose()
    assert sorted(closed) == ["a", "b"]


class Listing(DemoProvider):
    def __init__(self, name: str, names: list[str] | None) -> None:
        super().__init__(name=name)
        self.names = names

    async def models(self) -> list[str]:
        if self.names is None:
            raise UpstreamError("down")
        if self.names == ["hang"]:
            await asyncio.Event().wait()
        return self.names


async def test_list_models_keeps_what_routes_to_each_provider() -> None:
    router = ProviderRouter(
        {
            "a": Listing("a", ["gpt-1", "gpt-2", "llama"]),
            "b": Listing("b", ["llama", "mistral"]),
            "broken": Listing("broken", None),
        },
        {"llama": "b", "gpt-*": "a", "exact": "broken"},
        default="a",
    )
    assert await router.list_models() == {
        "exact": "broken",
        "gpt-1": "a",
        "gpt-2": "a",
        "llama": "b",
    }


async def test_list_models_leaves_out_what_routes_nowhere() -> None:
    router = ProviderRouter({"a": Listing("a", ["gpt-1", "unrouted"])}, {"gpt-*": "a"}, default="")
    assert await router.list_models() == {"gpt-1": "a"}


async def test_list_models_does_not_wait_for_a_silent_provider() -> None:
    router = ProviderRouter(
        {"a": Listing("a", ["m"]), "silent": Listing("silent", ["hang"])}, {}, default="a"
    )
    assert await router.list_models(wait=0.01) == {"m": "a"}


SECRET = "s3cret-value-that-must-not-show"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"headers": {"x-token": f"{SECRET}\r\nx-evil: 1"}}, "llm.providers.p.headers.x-token"),
        ({"headers": {"x-token": f"{SECRET}é"}}, "llm.providers.p.headers.x-token"),
        ({"headers": {"bad name": SECRET}}, "llm.providers.p.headers"),
        ({"headers": {"x-token": 1}}, "llm.providers.p.headers"),
        ({"headers": SECRET}, "llm.providers.p.headers"),
        ({"api_key": f"{SECRET}\n"}, "llm.providers.p.api_key"),
        ({"api_key": 7}, "llm.providers.p.api_key"),
    ],
)
def test_a_provider_setting_of_the_wrong_shape_names_the_field_never_the_value(
    spec: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=r"llm\.providers\.p") as caught:
        LLMConfig.from_table({"providers": {"p": {"base_url": "http://x/v1", **spec}}})
    message = str(caught.value)
    assert message.startswith(field)
    assert "s3cret" not in message


def test_an_api_key_from_the_environment_is_checked_by_name() -> None:
    spec = {"base_url": "http://x/v1", "api_key_env": "KEY"}
    config = LLMConfig.from_table({"providers": {"p": spec}})
    with pytest.raises(ValueError, match="api_key_env") as caught:
        config.providers["p"].build({"KEY": f"{SECRET}\n"})
    assert "llm.providers.p.api_key_env" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_provider_repr_shows_no_credentials() -> None:
    spec = {
        "base_url": "https://user:pa55word@api.example/v1?key=q",
        "api_key": SECRET,
        "headers": {"x-token": SECRET},
    }
    config = LLMConfig.from_table({"providers": {"p": spec}})
    shown = repr(config)
    assert "ProviderConfig('p', kind='openai', base_url='https://***@api.example/v1?***')" in shown
    assert "pa55word" not in shown
    assert "s3cret" not in shown


def test_without_a_default_provider_an_unrouted_model_is_refused() -> None:
    config = LLMConfig.from_table({"default_provider": "", "models": {"demo-*": "demo"}})
    router = config.router()
    assert router.provider_for("demo-1").name == "demo"
    with pytest.raises(ModelNotFound) as caught:
        router.provider_for("gpt-4o")
    assert caught.value.param == "model"
    assert caught.value.code == "model_not_found"


async def test_anthropic_providers_are_built_with_their_settings() -> None:
    from tidings.llm.providers.anthropic import AnthropicProvider

    config = LLMConfig.from_table(
        {
            "providers": {
                "claude": {"kind": "anthropic", "api_key_env": "KEY", "max_tokens": 1000},
                "proxy": {
                    "kind": "anthropic",
                    "base_url": "http://127.0.0.1:9/v1",
                    "models": ["claude-a"],
                },
            },
            "models": {"claude-*": "claude"},
        }
    )
    router = config.router(env={"KEY": "sk-ant-key"})
    try:
        claude = router.provider_for("claude-sonnet-4-5")
        assert isinstance(claude, AnthropicProvider)
        assert claude.url == "https://api.anthropic.com/v1/messages"
        assert claude.max_tokens == 1000
        proxy = router.providers["proxy"]
        assert isinstance(proxy, AnthropicProvider)
        assert proxy.url == "http://127.0.0.1:9/v1/messages"
        assert await proxy.models() == ["claude-a"]
    finally:
        await router.aclose()
