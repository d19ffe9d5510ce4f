"""Typed errors of cmm-twin. Callers branch on the type, never on the message text."""

from __future__ import annotations


class CmmTwinError(Exception):
    """Base class of every error cmm-twin raises on purpose."""


class ConfigError(CmmTwinError, ValueError):
    """A configuration value (flag, environment variable or file key) is invalid.

    `key` names the offending flag or key so the message can point at it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.reason = message


class PhysicsInputError(CmmTwinError, ValueError):
    """An input to the physics is not a plausible measurement (NaN, inf, <= 0, absurd)."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        where = f"{field}" if index is None else f"{field}[{index}]"
        super().__init__(f"{where}: {message}")
        self.field = field
        self.index = index
        self.reason = message


class UnknownMaterialError(PhysicsInputError):
    """A material key is not in the materials table."""

    def __init__(self, key: str, known: list[str], index: int | None = None) -> None:
        super().__init__("material", f"unknown material {key!r} (known: {', '.join(sorted(known))})", index)
        self.key = key
