"""Hooks of your own: sign-in by cookie, rooms for members only, a word filter on publish.

Run it with ``uvicorn examples.hooks_app:app``, then open a stream as a member:
``curl -N -H 'cookie: user=ada' 'http://127.0.0.1:8000/sse?channel=room:lobby'``.
"""

from typing import Any

from tidings import Rejected
from tidings.server import ConnectContext, PublishContext, SubscribeContext, create_app

MEMBERS = {"ada": {"rooms": {"lobby", "dev"}}, "bob": {"rooms": {"lobby"}}}
BANNED_WORDS = ("spam",)


def user_of(cookie: str) -> str | None:
    """Your own session lookup; here the cookie ``user=NAME`` names a member."""
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "user" and value in MEMBERS:
            return value
    return None


async def on_connect(ctx: ConnectContext) -> dict[str, Any]:
    user = user_of(ctx.headers.get("cookie", ""))
    if user is None:
        raise Rejected("login_required", "sign in first", status=401)
    return {"user": user}  # ctx.info of every later hook; presence info on WebSocket


def member(ctx: SubscribeContext | PublishContext) -> str:
    """The member a read or a publish comes from, who must be in the channel's room.

    Streams and sockets carry ``on_connect``'s info; an HTTP request has no
    connection, so its cookie is read again.
    """
    user = ctx.info["user"] if ctx.info else user_of(ctx.headers.get("cookie", ""))
    room = ctx.channel.removeprefix("room:")
    if user is None or room not in MEMBERS[user]["rooms"]:
        raise Rejected("not_a_member", f"you are not in {room!r}", status=403)
    return user


async def on_subscribe(ctx: SubscribeContext) -> None:
    member(ctx)


async def on_publish(ctx: PublishContext) -> Any:
    user = member(ctx)
    if ctx.text or not isinstance(ctx.data, dict):
        raise Rejected("bad_message", 'publish {"text": "..."}', status=422)
    text = str(ctx.data.get("text", ""))
    for word in BANNED_WORDS:
        text = text.replace(word, "*" * len(word))
    return {"text": text, "by": user}  # the data published instead


app = create_app(on_connect=on_connect, on_subscribe=on_subscribe, on_publish=on_publish)
