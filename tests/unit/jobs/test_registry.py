"""jobs/registry.py: job functions registered by name, arguments checked from JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tidings.errors import InvalidArguments, UnknownJob
from tidings.jobs import Jobs, Log, Progress
from tidings.jobs.registry import as_update


def registry() -> Jobs:
    jobs = Jobs()

    @jobs.task("resize")
    async def resize(
        url: str,
        width: int = 640,
        scale: float = 1.0,
        sharp: bool = False,
        tags: list[str] | None = None,
        options: dict[str, float] | None = None,
        extra: list | None = None,  # type: ignore[type-arg]
    ) -> AsyncIterator[Progress]:
        yield Progress(100)

    return jobs


def test_arguments_are_checked_and_defaults_left_to_the_function() -> None:
    spec = registry().spec("resize")
    assert spec.arguments({"url": "a.png"}) == {"url": "a.png"}
    assert spec.arguments(
        {"url": "a", "width": 3, "scale": 2, "sharp": True, "tags": ["x"], "options": {"q": 1}}
    ) == {"url": "a", "width": 3, "scale": 2.0, "sharp": True, "tags": ["x"], "options": {"q": 1.0}}
    assert isinstance(spec.arguments({"url": "a", "scale": 2})["scale"], float)
    assert spec.arguments({"url": "a", "tags": None, "extra": [1, "b"]})["extra"] == [1, "b"]


@pytest.mark.parametrize(
    ("document", "field", "reason"),
    [
        ({}, "url", "is required"),
        (None, "url", "is required"),
        ({"url": 1}, "url", "must be a string, not an integer"),
        ({"url": "a", "width": "9"}, "width", "must be an integer, not a string"),
        ({"url": "a", "width": 1.5}, "width", "must be an integer, not a number"),
        ({"url": "a", "width": True}, "width", "must be an integer, not a boolean"),
        ({"url": "a", "scale": False}, "scale", "must be a number, not a boolean"),
        ({"url": "a", "sharp": 1}, "sharp", "must be a boolean, not an integer"),
        ({"url": "a", "width": None}, "width", "must be an integer, not null"),
        ({"url": "a", "tags": ["x", 2]}, "tags[1]", "must be a string, not an integer"),
        ({"url": "a", "options": {"q": "1"}}, "options.q", "must be a number, not a string"),
        ({"url": "a", "options": []}, "options", "must be an object, not a list"),
        ({"url": "a", "height": 3}, "height", "takes no such argument"),
        ([1], "(body)", "must be a JSON object"),
    ],
)
def test_bad_arguments_name_the_field(document: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidArguments) as caught:
        registry().spec("resize").arguments(document)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert field in str(caught.value)
    assert caught.value.code == "invalid_value"


def test_unknown_names_and_duplicates() -> None:
    jobs = registry()
    with pytest.raises(UnknownJob) as caught:
        jobs.spec("nope")
    assert (caught.value.name, caught.value.code) == ("nope", "not_found")
    assert "resize" in jobs
    assert len(jobs) == 1
    assert jobs.names() == ["resize"]
    with pytest.raises(ValueError, match="registered already"):
        jobs.add("resize", jobs.spec("resize").function)


def test_functions_that_cannot_be_jobs_are_refused_when_registered() -> None:
    jobs = Jobs()

    async def plain(x: int) -> int:
        return x

    async def untyped(x) -> AsyncIterator[Progress]:  # type: ignore[no-untyped-def]
        yield Progress()

    async def objects(x: object) -> AsyncIterator[Progress]:
        yield Progress()

    async def variadic(*args: int) -> AsyncIterator[Progress]:
        yield Progress()

    async def fine() -> AsyncIterator[Progress]:
        yield Progress()

    with pytest.raises(TypeError, match="not an async generator function"):
        jobs.add("plain", plain)  # type: ignore[arg-type]
    for function in (untyped, objects):
        with pytest.raises(TypeError, match="argument 'x': annotate it"):
            jobs.add("bad", function)
    with pytest.raises(TypeError, match="only named arguments"):
        jobs.add("bad", variadic)
    for name in ("", "a b", "x" * 65, "-lead"):
        with pytest.raises(ValueError, match="invalid job name"):
            jobs.add(name, fine)
    assert len(jobs) == 0


def test_describe_lists_the_arguments() -> None:
    described = registry().spec("resize").describe()
    assert described["name"] == "resize"
    assert described["arguments"]["url"] == {"type": "str", "required": True}
    assert described["arguments"]["width"] == {"type": "int", "required": False, "default": 640}
    assert described["arguments"]["tags"]["type"] == "list[str] | None"


def test_updates_are_progress_log_or_dicts_of_theirs() -> None:
    assert as_update(Progress(5)) == Progress(5)
    assert as_update({"percent": 5, "message": "m", "result": [1]}) == Progress(5, "m", [1])
    assert as_update({"log": "line", "level": "warning"}) == Log("line", "warning")
    for bad in ({"percent": 5, "oops": 1}, {"log": "x", "percent": 1}, "text", 3):
        with pytest.raises(ValueError, match=r"must yield|unknown field"):
            as_update(bad)
    for percent in (-1, 101, True, "5"):
        with pytest.raises(ValueError, match="percent"):
            Progress(percent)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be strings"):
        Log(3)  # type: ignore[arg-type]
