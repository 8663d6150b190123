"""Typed domain errors. Domain code raises these; one interceptor maps them to gRPC statuses."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad input: where it is (a field path or "line 7") and what is wrong, with the fix."""

    field: str
    description: str


@dataclass
class TunewrightError(Exception):
    """Base of every error a user can act on.

    ``reason`` is an UPPER_SNAKE code that clients can switch on; ``message`` says what
    happened and how to fix it.
    """

    message: str
    reason: str = "UNKNOWN"
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class InvalidArgument(TunewrightError):
    """The request itself is wrong; retrying it unchanged fails again."""


class NotFound(TunewrightError):
    """A named resource does not exist."""


class AlreadyExists(TunewrightError):
    """A resource with that name exists already."""


class PermissionDenied(TunewrightError):
    """The caller may not have what it asked for here, whoever it is; an operator's setting
    decides (a token without the right is refused by the interceptor before any domain code)."""


class FailedPrecondition(TunewrightError):
    """The request is valid but the system is not in a state to run it."""


class ResourceExhausted(TunewrightError):
    """A size or quota limit was hit."""


class Unavailable(TunewrightError):
    """A service this one depends on did not answer; retrying later may work."""
