"""Errors a driver raises to answer a request with a protocol error.

    DriverError                 (code, kind, message, data)
    ├── Conflict                -32020  the slug exists with another tier or driver
    ├── InvalidTransition       -32021  the deployment's state forbids the verb
    ├── Unsupported             -32022  the backend cannot do this
    ├── InvalidProfile          -32023  the profile asks for what the driver cannot honour
    ├── BackendUnavailable      -32030  the backend cannot be reached
    └── BackendFailure          -32031  the backend failed; says whether it rolled back

Anything else a driver raises becomes -32603 (internal) in ``wire_error``, the one
place where exceptions turn into wire errors; the adapter stays alive.
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import codes
from .wire import DeploymentRef


class DriverError(Exception):
    """Base of the errors that map one to one to a protocol error code."""

    code: ClassVar[int] = codes.INTERNAL_ERROR

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = data

    @property
    def kind(self) -> str:
        return codes.kind_of(self.code)

    def data(self) -> dict[str, Any]:
        """The error's ``data`` object as it goes on the wire."""
        return {"kind": self.kind, **self.extra}


class Conflict(DriverError):
    code = codes.CONFLICT

    def __init__(self, message: str, *, existing: DeploymentRef) -> None:
        super().__init__(message, existing=existing.model_dump(mode="json"))


class InvalidTransition(DriverError):
    code = codes.INVALID_TRANSITION

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message, state=state)


class Unsupported(DriverError):
    code = codes.UNSUPPORTED

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason or message)


class InvalidProfile(DriverError):
    code = codes.INVALID_PROFILE

    def __init__(self, message: str, *, errors: list[str]) -> None:
        super().__init__(message, errors=list(errors))

    @property
    def errors(self) -> list[str]:
        """Every problem with the profile, one line each."""
        return list(self.extra["errors"])


class BackendUnavailable(DriverError):
    code = codes.BACKEND_UNAVAILABLE


class BackendFailure(DriverError):
    code = codes.BACKEND_FAILURE

    def __init__(self, message: str, *, rolled_back: bool, logs: list[str] | None = None) -> None:
        super().__init__(message, rolled_back=rolled_back, logs=list(logs or []))
