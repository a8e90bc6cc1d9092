"""Each public package's __all__ is sorted, complete and importable."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "tidings",
    "tidings.hub",
    "tidings.llm",
    "tidings.server",
    "tidings.client",
    "tidings.errors",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.{attribute} is missing"


def test_top_level_exports_every_error() -> None:
    import tidings
    import tidings.errors

    public_errors = {
        "BackendUnavailable",
        "InvalidChannel",
        "InvalidCursor",
        "InvalidPublication",
        "PermissionDenied",
        "PublishError",
        "SubscriptionClosed",
        "TidingsError",
    }
    assert public_errors <= set(tidings.__all__)
    assert set(tidings.errors.__all__) >= public_errors


def test_reset_is_one_class_everywhere() -> None:
    import tidings
    import tidings.client
    import tidings.hub
    from tidings.wire.reset import Reset

    assert tidings.Reset is tidings.hub.Reset is tidings.client.Reset is Reset


def test_top_level_names_load_lazily_and_resolve() -> None:
    import tidings
    import tidings.hub

    lazy = {name for name in tidings.__all__ if name not in vars(tidings)}
    assert set(tidings._LAZY) <= set(tidings.__all__)
    for name in tidings.__all__:
        assert name in dir(tidings)
    for name in lazy | set(tidings._LAZY):
        assert getattr(tidings, name) is getattr(tidings.hub, name)
    with pytest.raises(AttributeError):
        _ = tidings.NoSuchName  # type: ignore[attr-defined]
