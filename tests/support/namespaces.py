"""Namespaces with one restriction each, for tests of how operations are refused."""

from __future__ import annotations

from tidings.hub import NamespaceOptions, Namespaces

__all__ = ["restricted_namespaces"]


def restricted_namespaces() -> Namespaces:
    """``ro:`` refuses client publishes, ``hidden:`` subscriptions, ``quiet:`` presence."""
    return Namespaces(
        by_name={
            "ro": NamespaceOptions(publish=False),
            "hidden": NamespaceOptions(subscribe=False),
            "quiet": NamespaceOptions(presence=False),
        }
    )
