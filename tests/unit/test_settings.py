"""settings.py: defaults < TOML < environment < flags, and clear errors for bad values."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from tidings.hub import NamespaceOptions
from tidings.llm import LLMConfig
from tidings.settings import LLM_HISTORY_MAX_BYTES, Settings, SettingsError, load_settings


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.backend) == ("127.0.0.1", 8000, "memory")
    assert settings.max_body_bytes == 64 * 1024
    assert settings.sse_keepalive == 15.0


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(
        "port = 9000\nhistory_size = 50\nsse_retry = 1\n"
        "[namespaces.chat]\nhistory_size = 5\npublish = false\n"
    )
    settings = load_settings(path, env={"TIDINGS_PORT": "9001", "TIDINGS_FAST_WRITE": "off"})
    assert settings.port == 9001
    assert settings.history_size == 50
    assert settings.sse_retry == 1.0
    assert settings.fast_write is False
    namespaces = settings.namespace_options()
    assert namespaces.options("chat:1") == NamespaceOptions(history_size=5, publish=False)
    assert namespaces.options("other").history_size == 50
    flags = load_settings(path, env={"TIDINGS_PORT": "9001"}, port=9002, host=None)
    assert (flags.port, flags.host) == (9002, "127.0.0.1")


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('log_level = "debug"\n')
    assert load_settings(env={"TIDINGS_CONFIG": str(path)}).log_level == "debug"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope = 1\n", "unknown setting 'nope'"),
        ('port = "x"\n', "port must be an integer"),
        ("port = 70000\n", "port must be 0-65535"),
        ('backend = "kafka"\n', "backend must be one of"),
        ('overflow = "explode"\n', "overflow must be"),
        ("sse_keepalive = 0\n", "sse_keepalive must be > 0"),
        ("max_body_bytes = -1\n", "max_body_bytes must be > 0"),
        ("ws_max_frame_bytes = 0\n", "ws_max_frame_bytes must be > 0"),
        ("ws_ping_interval = 0\n", "ws_ping_interval must be > 0 seconds"),
        ("ws_pong_timeout = -1\n", "ws_pong_timeout must be > 0 seconds"),
        ("ws_rate_limit = 0\n", "ws_rate_limit must be > 0"),
        ("publish_rate_per_address = -1\n", "publish_rate_per_address must be >= 0"),
        ("publish_rate_per_connection = -1\n", "publish_rate_per_connection must be >= 0"),
        ("publish_rate_per_principal = -1\n", "publish_rate_per_principal must be >= 0"),
        ("publish_burst = 0\n", "publish_burst must be > 0 seconds"),
        ("publish_rate_clients = 0\n", "publish_rate_clients must be > 0"),
        ("[llm]\nmax_generations_per_client = 0\n", "llm.max_generations_per_client must be > 0"),
        ("presence_ttl = 0\n", "presence_ttl must be > 0 seconds"),
        (
            "[namespaces.chat]\nhistory_sise = 1\n",
            r"unknown setting 'namespaces\.chat\.history_sise'; "
            r"did you mean 'namespaces\.chat\.history_size'\?",
        ),
        (
            '[namespaces.chat]\nhistory_size = "9"\n',
            "namespaces.chat.history_size must be an integer",
        ),
        (
            "[namespaces.chat]\nhistory_size = 1.5\n",
            "namespaces.chat.history_size must be an integer",
        ),
        ('[namespaces.chat]\nhistory_ttl = "9"\n', "namespaces.chat.history_ttl must be a number"),
        ("[namespaces.chat]\nhistory_ttl = true\n", "namespaces.chat.history_ttl must be a number"),
        ("[namespaces.chat]\npublish = 1\n", 'publish must be true, false or "token"'),
        ("[namespaces.chat]\nhistory_size = -1\n", "history_size must be >= 0"),
        ("namespaces = 3\n", "namespaces must be a table"),
        ("port = [\n", "not valid TOML"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(
        SettingsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        load_settings(path, env={})


def test_bad_environment_values() -> None:
    with pytest.raises(SettingsError, match="TIDINGS_PORT: port must be an integer"):
        load_settings(env={"TIDINGS_PORT": "eighty"})
    with pytest.raises(SettingsError, match="fast_write must be true or false"):
        load_settings(env={"TIDINGS_FAST_WRITE": "maybe"})


SECRET = "a-secret-value-that-is-32-bytes!"


def test_authentication_settings_come_from_the_environment() -> None:
    settings = load_settings(
        env={
            "TIDINGS_JWT_SECRET": SECRET,
            "TIDINGS_API_KEYS": "ops:" + "k" * 16 + ", " + "n" * 20,
            "TIDINGS_CORS_ORIGINS": "https://app.example, http://localhost:5173",
        }
    )
    assert settings.authentication
    assert settings.api_key_map() == {"ops": "k" * 16, "key2": "n" * 20}
    assert settings.cors_origin_list() == ["https://app.example", "http://localhost:5173"]
    assert SECRET not in repr(settings)
    assert "k" * 16 not in repr(settings)
    assert not Settings().authentication


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TIDINGS_JWT_SECRET": "short-secret"}, "jwt_secret must be at least 32 bytes"),
        ({"TIDINGS_API_KEYS": "ops:short-key"}, "api_keys: key 1 must be at least 16"),
        ({"TIDINGS_API_KEYS": f"a:{SECRET},a:{SECRET}"}, "api_keys: key 2 needs a name"),
        ({"TIDINGS_CORS_ORIGINS": "app.example"}, "cors_origins: entry 1 must be"),
        ({"TIDINGS_CORS_ORIGINS": "*", "TIDINGS_CORS_CREDENTIALS": "1"}, "cors_credentials"),
        ({"TIDINGS_JWT_LEEWAY": "-1"}, "jwt_leeway must be >= 0"),
        ({"TIDINGS_JWT_LEEWAY": SECRET}, "jwt_leeway must be a number"),
        ({"TIDINGS_ADMIN_KEY": "short-admin-k"}, "admin_key must be at least 16"),
        ({"TIDINGS_ADMIN_KEY": f" {SECRET}"}, "admin_key must not start or end with white"),
    ],
)
def test_bad_authentication_settings_name_the_field_never_the_value(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings(env=env)
    for value in env.values():
        if len(value) > 8:
            assert value not in str(caught.value)


def test_missing_file() -> None:
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings("/nonexistent/tidings.toml", env={})


def test_websocket_settings() -> None:
    defaults = Settings()
    assert (defaults.ws_ping_interval, defaults.ws_pong_timeout) == (20.0, 20.0)
    assert defaults.ws_max_frame_bytes == 64 * 1024
    settings = load_settings(
        env={
            "TIDINGS_WS_PING_INTERVAL": "5",
            "TIDINGS_WS_MAX_FRAME_BYTES": "1024",
            "TIDINGS_PRESENCE_TTL": "30",
        }
    )
    assert settings.ws_ping_interval == 5.0
    assert settings.ws_max_frame_bytes == 1024
    assert settings.presence_ttl == 30.0


def test_redis_backend_settings(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text('backend = "redis"\nredis_url = "redis://cache:6380/2"\n')
    settings = load_settings(path, env={"TIDINGS_REDIS_PREFIX": "app1:"})
    assert (settings.backend, settings.redis_url, settings.redis_prefix) == (
        "redis",
        "redis://cache:6380/2",
        "app1:",
    )
    assert load_settings(env={}).redis_prefix == "tidings:"
    with pytest.raises(SettingsError, match="backend must be one of memory, redis"):
        load_settings(env={"TIDINGS_BACKEND": "etcd"})


def test_redis_settings_build_a_redis_backend() -> None:
    from tidings.hub.backends.redis import RedisBackend
    from tidings.server.app import build_hub

    settings = load_settings(
        env={},
        backend="redis",
        redis_url="redis://cache:6380/2",
        redis_prefix="app1:",
        idempotency_window=30.0,
    )
    backend = build_hub(settings).backend  # constructing connects to nothing
    assert isinstance(backend, RedisBackend)
    assert (backend.url, backend.prefix) == ("redis://cache:6380/2", "app1:")


def test_llm_table_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(
        "[llm]\ngrace = 4\n"
        '[llm.providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:11434/v1"\n'
        '[llm.models]\n"llama*" = "local"\n'
    )
    env = {"TIDINGS_LLM_GRACE": "2.5", "TIDINGS_LLM_MAX_GENERATIONS": "8"}
    llm = load_settings(path, env=env).llm
    assert (llm.grace, llm.max_generations) == (2.5, 8)
    assert llm.providers["local"].base_url == "http://127.0.0.1:11434/v1"
    assert llm.models == {"llama*": "local"}
    assert llm.default_provider == "demo"
    upstream = load_settings(env={"TIDINGS_LLM_BASE_URL": "https://api.openai.com/v1"})
    assert upstream.llm.default_provider == "upstream"


def test_llm_channels_are_kept_whole_and_closed_to_client_publishes() -> None:
    llm = LLMConfig(ttl=60, history_size=5000)
    options = Settings(llm=llm).namespace_options().options("llm:x")
    assert options == NamespaceOptions(
        history_size=5000,
        history_ttl=60.0,
        history_max_bytes=LLM_HISTORY_MAX_BYTES,
        publish=False,
    )
    # A larger per-channel bound of the deployment's own is kept.
    larger = Settings(history_max_bytes=2 * LLM_HISTORY_MAX_BYTES).namespace_options()
    assert larger.options("llm:x").history_max_bytes == 2 * LLM_HISTORY_MAX_BYTES
    mine = Settings(namespaces={"llm": {"history_size": 10}}).namespace_options()
    assert mine.options("llm:x").history_size == 10


def test_with_authentication_llm_channels_are_closed_to_clients() -> None:
    # Generations are read through /v1/streams/{id}, which checks their owner.
    secured = Settings(api_keys="ops:0123456789abcdef0123").namespace_options()
    options = secured.options("llm:x")
    assert (options.subscribe, options.history, options.presence, options.publish) == (
        False,
        False,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TIDINGS_LLM_GRACE": "soon"}, "llm.grace must be a number"),
        ({"TIDINGS_LLM_LEASE": "0"}, r"llm\.lease must be 0\.1 to 3600 seconds, not 0\.0"),
        ({"TIDINGS_LLM_LEASE": "nan"}, r"llm\.lease must be 0\.1 to 3600 seconds"),
        ({"TIDINGS_LLM_LEASE": "soon"}, "llm.lease must be a number"),
        ({"TIDINGS_PROXY_COMPLETE_URL": "ftp://x"}, "proxy_complete_url must be an http"),
        ({"TIDINGS_LLM_COLOUR": "red"}, r"unknown setting 'llm\.colour'; known: api_key, "),
        ({"TIDINGS_LLM_GRCE": "1"}, r"unknown setting 'llm\.grce'; did you mean 'llm\.grace'\?"),
        ({"TIDINGS_LLM_BASE_URL": "ftp://x"}, "base_url must be an http"),
    ],
)
def test_bad_llm_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_llm_table_is_read_once_into_a_typed_field(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text('[llm]\ngrace = 4\n[llm.providers.p]\nbase_url = "http://h/v1"\n')
    settings = load_settings(path, env={})
    assert isinstance(settings.llm, LLMConfig)
    assert settings.llm == LLMConfig.from_table(
        {"grace": 4, "providers": {"p": {"base_url": "http://h/v1"}}}
    )
    assert Settings().llm == LLMConfig.from_table({})
    flagged = load_settings(env={}, llm={"enabled": False})
    assert flagged.llm.enabled is False
    with pytest.raises(SettingsError, match="llm must be an LLMConfig"):
        Settings(llm={"grace": 4})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[llm]\napi_key = 1234567\n", "llm.api_key must be a string"),
        (
            '[llm.providers.p]\nbase_url = "http://h/v1"\nheaders = "Bearer 1234567"\n',
            "headers must be a table of strings",
        ),
        (
            '[llm.providers.p]\nbase_url = "http://h/v1"\napi_key = ["1234567"]\n',
            "api_key must be a string",
        ),
    ],
)
def test_llm_errors_name_the_setting_not_its_value(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings(path, env={})
    assert "1234567" not in str(caught.value)


def test_llm_secrets_stay_out_of_the_settings_repr() -> None:
    llm = LLMConfig.from_table(
        {
            "base_url": "http://h/v1",
            "api_key": "sk-1234567",
            "providers": {"p": {"base_url": "http://h/v1", "headers": {"x-key": "h-1234567"}}},
        }
    )
    text = repr(Settings(llm=llm))
    assert "upstream" in text
    assert "1234567" not in text


def test_http2_settings_from_file_and_environment(tmp_path: Path) -> None:
    assert (Settings().http2, Settings().certfile, Settings().keyfile) == (False, "", "")
    path = tmp_path / "tidings.toml"
    path.write_text('http2 = true\ncertfile = "/etc/tidings/cert.pem"\n')
    settings = load_settings(path, env={"TIDINGS_KEYFILE": "/etc/tidings/key.pem"})
    assert (settings.http2, settings.certfile, settings.keyfile) == (
        True,
        "/etc/tidings/cert.pem",
        "/etc/tidings/key.pem",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TIDINGS_HTTP2": "1"}, "http2 needs certfile and keyfile"),
        ({"TIDINGS_HTTP2": "1", "TIDINGS_CERTFILE": "c.pem"}, "http2 needs certfile and keyfile"),
        ({"TIDINGS_CERTFILE": "c.pem", "TIDINGS_KEYFILE": "k.pem"}, "used with http2 only"),
        ({"TIDINGS_HTTP2": "maybe"}, "TIDINGS_HTTP2: http2 must be true or false"),
    ],
)
def test_bad_http2_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A typo gets the closest name; anything else gets the list of names.
        ("histroy_size = 1\n", r": unknown setting 'histroy_size'; did you mean 'history_size'\?"),
        (
            "zzz = 1\n",
            r": unknown setting 'zzz'; known: access_log_streams, admin_key, allow_anonymous, ",
        ),
        # The article and the noun suit every kind.
        ('port = "x"\n', r": port must be an integer\Z"),
        ("port = 1.5\n", r": port must be an integer\Z"),
        ('sse_retry = "soon"\n', r": sse_retry must be a number\Z"),
        ('demo = "maybe"\n', r": demo must be true or false\Z"),
        ("host = 1\n", r": host must be a string\Z"),
        ('[llm]\ngrace = "soon"\n', r"llm\.grace must be a number\Z"),
        ('[llm]\nmax_tokens = "x"\n', r"llm\.max_tokens must be an integer\Z"),
        ('[llm]\nenabled = "x"\n', r"llm\.enabled must be true or false\Z"),
        (
            '[llm.providers.p]\nbase_url = "http://h/v1"\ntimeuot = 1\n',
            r"unknown setting 'llm\.providers\.p\.timeuot'; "
            r"did you mean 'llm\.providers\.p\.timeout'\?",
        ),
    ],
)
def test_settings_errors_read_the_same_at_every_level(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(path, env={})


def test_an_unknown_keyword_setting_gets_the_closest_name() -> None:
    with pytest.raises(SettingsError, match=r"^unknown setting 'prot'; did you mean 'port'\?$"):
        load_settings(env={}, prot=8001)


def test_compression_settings(tmp_path: Path) -> None:
    assert (Settings().sse_compression, Settings().ws_compression) == ("off", "off")
    path = tmp_path / "tidings.toml"
    path.write_text('sse_compression = "gzip"\n')
    settings = load_settings(path, env={"TIDINGS_WS_COMPRESSION": "deflate"})
    assert (settings.sse_compression, settings.ws_compression) == ("gzip", "deflate")
    flags = load_settings(env={"TIDINGS_SSE_COMPRESSION": "gzip"}, sse_compression="off")
    assert flags.sse_compression == "off"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TIDINGS_SSE_COMPRESSION": "br"}, "sse_compression must be one of off, gzip"),
        ({"TIDINGS_SSE_COMPRESSION": "deflate"}, "sse_compression must be one of off, gzip"),
        ({"TIDINGS_WS_COMPRESSION": "gzip"}, "ws_compression must be one of off, deflate"),
        ({"TIDINGS_WS_COMPRESSION": "on"}, "ws_compression must be one of off, deflate"),
    ],
)
def test_bad_compression_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_every_setting_is_in_the_settings_reference() -> None:
    reference = (Path(__file__).parents[2] / "docs" / "reference" / "settings.md").read_text()
    tables = {"namespaces": "## Namespaces", "llm": "## LLM relay"}  # a section each
    missing = [
        f.name
        for f in fields(Settings)
        if f"| `{f.name}` |" not in reference and tables.get(f.name, "\0") not in reference
    ]
    assert not missing, f"docs/reference/settings.md has no row for {missing}"


def test_hook_settings_come_from_the_environment() -> None:
    settings = load_settings(
        env={
            "TIDINGS_STATIC_DIR": "site",
            "TIDINGS_HOOK_TIMEOUT": "1.5",
            "TIDINGS_PROXY_PUBLISH_URL": "https://backend.example/tidings/publish",
            "TIDINGS_PROXY_HEADERS": "Cookie",
        }
    )
    assert (settings.static_dir, settings.hook_timeout) == ("site", 1.5)
    assert settings.proxy_urls() == {"proxy_publish_url": "https://backend.example/tidings/publish"}
    assert settings.proxy_header_names() == ("cookie",)


def test_the_admin_key_comes_from_the_environment_and_stays_out_of_the_repr() -> None:
    settings = load_settings(env={"TIDINGS_ADMIN_KEY": SECRET})
    assert settings.admin_key == SECRET
    assert SECRET not in repr(settings)
    assert not settings.authentication  # anonymous clients keep their access
    assert Settings().admin_key == ""


def test_the_demo_gives_the_chat_rooms_join_and_leave_and_typing_no_history() -> None:
    options = Settings().namespace_options()
    assert options.options("room:lobby").join_leave is True
    assert options.options("typing:lobby").history_size == 0
    assert options.options("news").join_leave is False
    mine = Settings(namespaces={"room": {"join_leave": False, "history_size": 5}})
    assert mine.namespace_options().options("room:lobby") == NamespaceOptions(
        join_leave=False, history_size=5
    )
    off = Settings(demo=False).namespace_options()
    assert off.options("room:lobby") == off.options("typing:lobby") == off.options("news")
