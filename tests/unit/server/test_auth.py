"""Principals, credentials and the one authorize(): tokens, keys and namespace rules."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import PermissionDenied, Unauthorized
from tidings.hub import NamespaceOptions, Namespaces
from tidings.server.auth import (
    ADMIN,
    ANONYMOUS,
    Action,
    Authority,
    Kind,
    Principal,
    TokenVerifier,
    mint_token,
    private_owner,
)

SECRET = "s3cret-s3cret-s3cret-s3cret-0123"


def now() -> int:
    """The time now: read when a token is made, never once at import (a loaded
    machine can take minutes from collecting a test to running it)."""
    return int(time.time())


def token(**claims: Any) -> str:
    base: dict[str, Any] = {"sub": "alice", "exp": now() + 3600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")


def scope(*headers: tuple[str, str], query: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "query_string": query.encode(),
    }


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("made", "reason"),
    [
        (lambda: token(exp=now() - 10), "expired"),
        (lambda: token(nbf=now() + 36000), "not_yet_valid"),
        (
            lambda: jwt.encode(
                {"sub": "a", "exp": now() + 3600}, "other-secret-of-32-bytes-length!"
            ),
            "invalid",
        ),
        (lambda: jwt.encode({"sub": "a", "exp": now() + 3600}, None, algorithm="none"), "invalid"),
        (lambda: "not.a.jwt", "invalid"),
        (lambda: "", "invalid"),
        (lambda: token(sub=None), "invalid"),
        (lambda: token(exp=None), "invalid"),
        (lambda: token(sub=""), "invalid"),
        (lambda: token(sub=42), "invalid"),
        (lambda: token(subscribe="chat:*"), "invalid"),
        (lambda: token(publish=[1, 2]), "invalid"),
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-signature",
        "alg-none",
        "malformed",
        "empty",
        "no-sub",
        "no-exp",
        "empty-sub",
        "sub-not-a-string",
        "grant-not-a-list",
        "grant-not-strings",
    ],
)
def test_refused_tokens_are_unauthorized_with_a_reason(made: Any, reason: str) -> None:
    verifier = TokenVerifier(secret=SECRET)
    bad = made()
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(bad)
    assert caught.value.reason == reason
    assert caught.value.code == "unauthorized"
    if bad:
        assert bad not in str(caught.value), "an error never repeats the token"


def test_a_valid_token_names_its_subject_grants_and_expiry() -> None:
    expires = now() + 3600
    principal = TokenVerifier(secret=SECRET).verify(
        token(exp=expires, subscribe=["chat:*", "news"], publish=["chat:room1"])
    )
    assert principal.kind is Kind.CLIENT
    assert principal.sub == "alice"
    assert principal.identity == "user:alice"
    assert principal.expires == expires
    assert principal.granted(Action.SUBSCRIBE, "chat:room2")
    assert principal.granted(Action.SUBSCRIBE, "news")
    assert not principal.granted(Action.SUBSCRIBE, "newsroom")
    assert principal.granted(Action.PUBLISH, "chat:room1")
    assert not principal.granted(Action.PUBLISH, "chat:room2")
    assert not principal.granted(Action.HISTORY, "chat:room1")


def test_audience_and_issuer_are_checked_when_set() -> None:
    verifier = TokenVerifier(secret=SECRET, audience="tidings", issuer="https://auth.example")
    good = token(aud="tidings", iss="https://auth.example")
    assert verifier.verify(good).sub == "alice"
    for bad in (token(aud="other", iss="https://auth.example"), token(aud="tidings"), token()):
        with pytest.raises(Unauthorized):
            verifier.verify(bad)


def test_leeway_tolerates_clock_skew() -> None:
    skewed = token(exp=now() - 5)
    assert TokenVerifier(secret=SECRET, leeway=30).verify(skewed).sub == "alice"


def rsa_pair(tmp_path: Path) -> tuple[Any, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "public.pem"
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, path


def test_rs256_with_a_pem_public_key(tmp_path: Path) -> None:
    private, path = rsa_pair(tmp_path)
    verifier = TokenVerifier(key_file=path)
    signed = jwt.encode({"sub": "bob", "exp": now() + 3600}, private, algorithm="RS256")
    assert verifier.verify(signed).sub == "bob"
    # The public key used as an HMAC secret (algorithm confusion) is refused.
    forged = jwt.api_jws.PyJWS().encode(
        json.dumps({"sub": "mallory", "exp": now() + 3600}).encode(),
        key="unrelated-secret-of-enough-length",
        algorithm="HS256",
    )
    with pytest.raises(Unauthorized):
        verifier.verify(forged)


def test_es256_with_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid}
            for kid, key in keys.items()
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    verifier = TokenVerifier(key_file=path)
    claims = {"sub": "carol", "exp": now() + 3600}
    for kid, key in keys.items():
        signed = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
        assert verifier.verify(signed).sub == "carol"
    wrong = jwt.encode(claims, keys["k1"], algorithm="ES256", headers={"kid": "k2"})
    with pytest.raises(Unauthorized):
        verifier.verify(wrong)


def test_a_key_file_that_holds_no_key_is_refused_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("top-secret-but-not-a-key")
    with pytest.raises(ValueError, match="no usable public key") as caught:
        TokenVerifier(key_file=path)
    assert "top-secret" not in str(caught.value)
    with pytest.raises(ValueError, match="cannot read"):
        TokenVerifier(key_file=tmp_path / "missing.pem")


def test_mint_token_round_trips() -> None:
    minted = mint_token(SECRET, sub="dev", ttl=60, grants={"subscribe": ["a:*"]})
    principal = TokenVerifier(secret=SECRET).verify(minted)
    assert (principal.sub, principal.granted(Action.SUBSCRIBE, "a:b")) == ("dev", True)


@given(st.text(max_size=300))
def test_any_string_as_a_token_is_either_valid_or_unauthorized(text: str) -> None:
    with contextlib.suppress(Unauthorized):
        TokenVerifier(secret=SECRET).verify(text)


@given(st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=80)))
def test_any_token_segments_are_either_valid_or_unauthorized(parts: list[str]) -> None:
    with contextlib.suppress(Unauthorized):
        TokenVerifier(secret=SECRET).verify(".".join(parts))


# -- credentials -------------------------------------------------------------------------------

KEYS = {"primary": "k" * 32, "next": "n" * 32}


def authority(**rules: Any) -> Authority:
    return Authority(
        Namespaces(by_name={name: NamespaceOptions(**options) for name, options in rules.items()}),
        verifier=TokenVerifier(secret=SECRET),
        api_keys=KEYS,
        token_cookie="tidings_token",
    )


def test_credentials_are_read_from_headers_query_and_cookie() -> None:
    auth = authority()
    good = token()
    assert auth.authenticate(scope(("Authorization", f"Bearer {good}"))).sub == "alice"
    assert auth.authenticate(scope(query=f"channel=a&token={good}")).sub == "alice"
    assert auth.authenticate(scope(("Cookie", f"x=1; tidings_token={good}"))).sub == "alice"
    server = auth.authenticate(scope(("X-API-Key", KEYS["next"])))
    assert (server.kind, server.sub, server.identity) == (Kind.SERVER, "next", "key:next")
    assert auth.authenticate(scope(("Authorization", f"ApiKey {KEYS['primary']}"))).sub == "primary"
    assert auth.authenticate(scope()) is ANONYMOUS


def test_a_cookie_counts_only_when_configured() -> None:
    auth = Authority(Namespaces(), verifier=TokenVerifier(secret=SECRET))
    assert auth.authenticate(scope(("Cookie", f"tidings_token={token()}"))) is ANONYMOUS


@pytest.mark.parametrize(
    "request_scope",
    [
        scope(("Authorization", "Bearer nonsense")),
        scope(("Authorization", "Basic dXNlcjpwYXNz")),
        scope(("Authorization", "ApiKey wrong-key")),
        scope(("X-API-Key", "wrong-key")),
        scope(query="token=nonsense"),
        scope(("Cookie", "tidings_token=nonsense")),
        scope(("Authorization", f"Bearer {token(exp=now() - 1)}")),
    ],
    ids=[
        "bad-bearer",
        "basic",
        "bad-apikey",
        "bad-x-api-key",
        "bad-query",
        "bad-cookie",
        "expired",
    ],
)
def test_a_refused_credential_never_falls_back_to_anonymous(request_scope: Any) -> None:
    with pytest.raises(Unauthorized):
        authority().authenticate(request_scope)


def test_without_a_jwt_key_tokens_are_refused() -> None:
    auth = Authority(Namespaces(), api_keys=KEYS)
    with pytest.raises(Unauthorized):
        auth.authenticate(scope(("Authorization", f"Bearer {token()}")))


def test_an_api_key_may_come_as_a_bearer_token() -> None:
    server = authority().authenticate(scope(("Authorization", f"Bearer {KEYS['next']}")))
    assert (server.kind, server.sub) == (Kind.SERVER, "next")


def test_with_no_authentication_configured_credentials_are_ignored() -> None:
    auth = Authority(Namespaces())
    for headers in (("Authorization", "Bearer sk-anything"), ("X-API-Key", "whatever")):
        assert auth.authenticate(scope(headers)) is ANONYMOUS


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_any_header_values_are_either_accepted_or_unauthorized(auth: bytes, query: bytes) -> None:
    request = {
        "type": "http",
        "headers": [(b"authorization", auth), (b"x-api-key", auth), (b"cookie", auth)],
        "query_string": query,
    }
    with contextlib.suppress(Unauthorized):
        authority().authenticate(request)


# -- authorize ---------------------------------------------------------------------------------


def client(**grants: list[str]) -> Principal:
    return Principal(Kind.CLIENT, sub="alice", grants={k: tuple(v) for k, v in grants.items()})


SERVER = Principal(Kind.SERVER, sub="primary")
CHANNEL_ACTIONS = (Action.SUBSCRIBE, Action.PUBLISH, Action.HISTORY, Action.PRESENCE)


def outcome(auth: Authority, principal: Principal, action: Action, channel: str | None) -> str:
    try:
        auth.authorize(principal, action, channel)
    except Unauthorized:
        return "401"
    except PermissionDenied:
        return "403"
    return "ok"


def test_with_no_authentication_configured_everyone_may_do_everything() -> None:
    open_server = Authority(Namespaces())
    assert not open_server.configured
    for action in Action:
        if action is Action.ADMIN:
            continue  # the admin key only, whatever else is configured (below)
        channel = "chat:room" if action in CHANNEL_ACTIONS else None
        assert outcome(open_server, ANONYMOUS, action, channel) == "ok"


def test_namespace_switches_bind_every_client_but_not_the_server() -> None:
    auth = authority(
        quiet=dict(publish=False, presence=False, history=False), closed=dict(subscribe=False)
    )
    everything = client(**{a.value: ["*"] for a in CHANNEL_ACTIONS})
    assert outcome(auth, everything, Action.PUBLISH, "quiet:x") == "403"
    assert outcome(auth, everything, Action.PRESENCE, "quiet:x") == "403"
    assert outcome(auth, everything, Action.HISTORY, "quiet:x") == "403"
    assert outcome(auth, everything, Action.SUBSCRIBE, "quiet:x") == "ok"
    assert outcome(auth, everything, Action.SUBSCRIBE, "closed:x") == "403"
    assert outcome(auth, everything, Action.HISTORY, "closed:x") == "403"
    for action in CHANNEL_ACTIONS:
        assert outcome(auth, SERVER, action, "quiet:x") == "ok"


def test_private_channels_belong_to_the_user_they_name() -> None:
    auth = authority(user=dict(private=True))
    alice, bob = client(), Principal(Kind.CLIENT, sub="bob")
    for action in CHANNEL_ACTIONS:
        assert outcome(auth, alice, action, "user:alice") == "ok"
        assert outcome(auth, alice, action, "user:alice/inbox") == "ok"
        assert outcome(auth, bob, action, "user:alice") == "403"
        assert outcome(auth, bob, action, "user:alice/inbox") == "403"
        assert outcome(auth, ANONYMOUS, action, "user:alice") == "401"
    # Even a namespace open to anonymous clients keeps private channels private.
    anonymous_too = authority(user=dict(private=True, anonymous=True))
    assert outcome(anonymous_too, ANONYMOUS, Action.SUBSCRIBE, "user:alice") == "401"
    assert outcome(anonymous_too, bob, Action.SUBSCRIBE, "user:alice") == "403"
    # A token may name a private channel explicitly (an operator's view).
    admin = Principal(Kind.CLIENT, sub="admin", grants={"subscribe": ("user:*",)})
    assert outcome(auth, admin, Action.SUBSCRIBE, "user:alice") == "ok"
    assert private_owner("user:alice/inbox") == "alice"


def test_publish_token_needs_the_grant() -> None:
    auth = authority(feed=dict(publish="token", anonymous=True))
    assert outcome(auth, ANONYMOUS, Action.SUBSCRIBE, "feed:x") == "ok"
    assert outcome(auth, ANONYMOUS, Action.PUBLISH, "feed:x") == "401"
    assert outcome(auth, client(), Action.PUBLISH, "feed:x") == "403"
    assert outcome(auth, client(publish=["feed:*"]), Action.PUBLISH, "feed:x") == "ok"


def test_anonymous_access_is_off_once_authentication_is_configured_unless_allowed() -> None:
    auth = authority(public=dict(anonymous=True))
    assert auth.configured
    assert outcome(auth, ANONYMOUS, Action.SUBSCRIBE, "chat:x") == "401"
    assert outcome(auth, client(), Action.SUBSCRIBE, "chat:x") == "403"
    assert outcome(auth, client(subscribe=["chat:*"]), Action.SUBSCRIBE, "chat:x") == "ok"
    assert outcome(auth, ANONYMOUS, Action.SUBSCRIBE, "public:x") == "ok"
    assert outcome(auth, ANONYMOUS, Action.PUBLISH, "public:x") == "ok"


def test_server_wide_actions_need_the_server_once_configured() -> None:
    auth = authority()
    for action in (Action.CHANNELS, Action.STATS, Action.METRICS):
        assert outcome(auth, ANONYMOUS, action, None) == "401"
        assert outcome(auth, client(), action, None) == "403"
        assert outcome(auth, SERVER, action, None) == "ok"
    for action in (Action.LLM_CREATE, Action.LLM_VIEW, Action.LLM_CANCEL):
        assert outcome(auth, ANONYMOUS, action, None) == "401"
        assert outcome(auth, client(), action, None) == "ok"
        assert outcome(auth, SERVER, action, None) == "ok"


def test_admits_anonymous_follows_the_namespace_rules() -> None:
    from tidings.hub import NamespaceOptions, Namespaces
    from tidings.server.auth import Authority

    open_by_default = Authority(Namespaces())
    assert open_by_default.admits_anonymous()
    keys = {"ops": "k" * 32}
    assert not Authority(Namespaces(), api_keys=keys).admits_anonymous()
    public = Namespaces(by_name={"news": NamespaceOptions(anonymous=True)})
    assert Authority(public, api_keys=keys).admits_anonymous()


# -- the admin key -----------------------------------------------------------------------------

ADMIN_KEY = "a" * 24


@pytest.mark.parametrize("configured", [False, True], ids=["open", "configured"])
def test_the_admin_key_is_the_admin_principal_and_a_wrong_one_is_refused(configured: bool) -> None:
    auth = Authority(Namespaces(), api_keys=KEYS if configured else None, admin_key=ADMIN_KEY)
    principal = auth.authenticate(scope(("Authorization", f"Admin {ADMIN_KEY}")))
    assert principal is ADMIN
    assert (principal.kind, principal.identity) == (Kind.ADMIN, "admin")
    for wrong in ("Admin " + "b" * 24, "Admin " + ADMIN_KEY[:-1], "admin " + ADMIN_KEY + "x"):
        with pytest.raises(Unauthorized, match="wrong admin key"):
            auth.authenticate(scope(("Authorization", wrong)))


def test_without_an_admin_key_there_is_no_admin_principal() -> None:
    with pytest.raises(Unauthorized, match="wrong admin key"):
        authority().authenticate(scope(("Authorization", f"Admin {ADMIN_KEY}")))
    # With nothing configured, credentials are ignored as before.
    assert Authority(Namespaces()).authenticate(scope(("Authorization", "Admin x"))) is ANONYMOUS


def test_an_admin_key_leaves_other_credentials_as_they_were() -> None:
    open_server = Authority(Namespaces(), admin_key=ADMIN_KEY)
    assert not open_server.configured  # anonymous clients keep their access
    for headers in (("Authorization", "Bearer sk-anything"), ("Authorization", "Basic eA==")):
        assert open_server.authenticate(scope(headers)) is ANONYMOUS
    auth = Authority(Namespaces(), api_keys=KEYS, admin_key=ADMIN_KEY)
    assert auth.authenticate(scope(("X-API-Key", KEYS["primary"]))).kind is Kind.SERVER


def test_admin_actions_need_the_admin_principal_and_nothing_else_opens_them() -> None:
    for auth in (Authority(Namespaces(), admin_key=ADMIN_KEY), authority()):
        assert outcome(auth, ADMIN, Action.ADMIN, None) == "ok"
        for principal in (ANONYMOUS, client(subscribe=["*"]), SERVER):
            assert outcome(auth, principal, Action.ADMIN, None) == "401"


def test_the_admin_may_publish_test_events_and_nothing_more() -> None:
    auth = authority(quiet=dict(publish=False))
    assert outcome(auth, ADMIN, Action.PUBLISH, "chat:room") == "ok"
    assert outcome(auth, ADMIN, Action.PUBLISH, "quiet:room") == "403"
    for action in (Action.SUBSCRIBE, Action.HISTORY, Action.PRESENCE):
        assert outcome(auth, ADMIN, action, "chat:room") == "403"
    for action in (Action.CHANNELS, Action.STATS, Action.METRICS, Action.LLM_CREATE):
        assert outcome(auth, ADMIN, action, None) == "403"
