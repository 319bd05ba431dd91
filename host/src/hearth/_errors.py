"""One error tree for everything the host can fail with.

    HearthError                      kind (the CLI's JSON error kind)
    ├── InvalidInput                 invalid_input        bad slug, tier, driver or settings
    │   └── NotFound                 not_found            no such workspace or operation
    ├── Busy                         busy                 another operation runs on the slug
    ├── Interrupted                  interrupted          its host stopped before it finished
    ├── AdapterNotFound              adapter_not_found    no hearth-adapter-<driver> anywhere
    ├── AdapterRefused               adapter_refused      found, but unsafe or not our driver
    ├── AdapterCrashed               adapter_crashed      the process died (exit code, stderr tail)
    ├── ProtocolViolation            protocol_violation   the adapter broke the wire contract
    ├── CallTimeout                  timeout              no answer within the caller's bound
    ├── SlugLocked                   slug_locked          another process holds the slug too long
    ├── ClientClosed                 closed               a call on an AdapterClient you closed
    ├── StoreError                   store_error          the store or the home cannot be used
    ├── DaemonUnavailable            daemon_unavailable   no hearth daemon answers at the address
    ├── Unauthorized                 unauthorized         the daemon refused the bearer token
    ├── Forbidden                    forbidden            the token lacks the route's scope (.scope)
    ├── Unavailable                  unavailable          the daemon drains: no new work (.retry_after)
    └── AdapterError                 (the protocol's kind) the adapter answered with an error
        ├── Conflict                 conflict             .reason, .existing: DeploymentRef | None
        ├── InvalidTransition        invalid_transition   .state
        ├── Unsupported              unsupported          .reason
        ├── InvalidProfile           invalid_profile      .errors
        ├── BackendUnavailable       backend_unavailable
        ├── BackendFailure           backend_failure      .rolled_back, .logs
        └── Cancelled                cancelled

Wire errors become these in exactly one place, ``from_wire_error``.

Every error's JSON (``to_json()``, the daemon's ``{"error": ...}``) carries ``retryable``: whether
asking the same thing again later may succeed with nothing else changed (``RETRYABLE``, one
line per kind; each class's ``retryable``). A ``conflict`` says which one in ``reason``
(``CONFLICT_REASONS``): a console switches on ``kind`` and ``reason``, never on the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from hearth_adaptersdk import codes

if TYPE_CHECKING:
    from hearth_adaptersdk import DeploymentRef


#: Whether asking the same thing again later may succeed, with nothing else changed, by kind:
#: true for what passes (another operation on the slug, a lock held, a daemon stopping or not
#: answering, a backend or store out of reach, a bound that ran out), false for what a person
#: has to change first (the request, the record, the settings, the adapter) or decide (D8: a
#: failed verb is never retried for them). A kind not listed (an adapter's own) is false.
RETRYABLE: dict[str, bool] = {
    "invalid_input": False,
    "not_found": False,
    "busy": True,
    "interrupted": False,
    "adapter_not_found": False,
    "adapter_refused": False,
    "adapter_crashed": False,
    "protocol_violation": False,
    "timeout": True,
    "slug_locked": True,
    "closed": True,
    "store_error": True,
    "daemon_unavailable": True,
    "unauthorized": False,
    "forbidden": False,
    "unavailable": True,
    "conflict": False,
    "invalid_transition": False,
    "unsupported": False,
    "invalid_profile": False,
    "backend_unavailable": True,
    "backend_failure": False,
    "cancelled": False,
    "error": False,
}

#: Why a ``conflict`` is refused (its ``reason``): ``key_reused``, the idempotency key was used
#: for a request with other arguments (``operation`` names the one it was used for);
#: ``other_tier``, the workspace (or the deployment to adopt) has another tier; ``other_driver``,
#: the workspace is on another driver; ``recorded``, adopt of a slug that has a live record;
#: ``backend``, the adapter refused because its backend holds the workspace otherwise than asked
#: (``existing`` says how) and hearth cannot say more. ``_states.py`` decides which.
CONFLICT_REASONS: tuple[str, ...] = ("key_reused", "other_tier", "other_driver", "recorded", "backend")


def retryable_kind(kind: str) -> bool:
    """Whether an error of ``kind`` may succeed asked again later (``RETRYABLE``)."""
    return RETRYABLE.get(kind, False)


class HearthError(Exception):
    """Base of every error hearth raises; ``kind`` is stable and machine-readable, and
    ``retryable`` says whether asking again later may succeed (``RETRYABLE``)."""

    kind: ClassVar[str] = "error"
    #: What the error's JSON said of ``retryable`` when it was read back (``error_from_json``:
    #: a newer daemon's word is kept), else None: the kind's.
    said_retryable: bool | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether the same request asked again later may succeed (``RETRYABLE`` by kind)."""
        return self.said_retryable if self.said_retryable is not None else retryable_kind(self.kind)

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``{"error": ...}`` payload body."""
        return {"kind": self.kind, "message": self.message, "retryable": self.retryable}


class InvalidInput(HearthError):
    """A request, or the settings, not valid; ``errors``: each problem of a request's body or
    query (``{"loc", "msg"}``), when the daemon's validation found them."""

    kind = "invalid_input"

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = [dict(item) for item in errors] if errors is not None else None

    def to_json(self) -> dict[str, Any]:
        answer = super().to_json()
        return answer if self.errors is None else {**answer, "errors": self.errors}


class NotFound(InvalidInput):
    """No such workspace or operation (an ``InvalidInput``, so older handlers still catch it)."""

    kind = "not_found"


class Busy(HearthError):
    """Another operation runs on the slug and this one conflicts with it (a different verb or
    other arguments): refused at once rather than after a wait for the slug's lock."""

    kind = "busy"

    def __init__(self, message: str, operation: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "operation": self.operation}


class Interrupted(HearthError):
    """The operation's host stopped (closed, signalled, killed) before it finished, or a store
    write that failed while it ran left its outcome unrecorded."""

    kind = "interrupted"


class AdapterNotFound(HearthError):
    kind = "adapter_not_found"


class AdapterRefused(HearthError):
    kind = "adapter_refused"


class AdapterCrashed(HearthError):
    kind = "adapter_crashed"

    def __init__(
        self, adapter: str, exit_code: int | None, stderr_tail: Sequence[str], what: str = "exited"
    ) -> None:
        self.adapter = adapter
        self.exit_code = exit_code
        self.stderr_tail = list(stderr_tail)
        code = f"exit code {exit_code}" if exit_code is not None else "exit code unknown"
        last = (
            "; stderr: " + " | ".join(self.stderr_tail[-5:])
            if self.stderr_tail
            else "; it wrote nothing to stderr"
        )
        super().__init__(f"adapter {adapter} {what} ({code}){last}")

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "exit_code": self.exit_code, "stderr_tail": self.stderr_tail[-20:]}


class ProtocolViolation(HearthError):
    kind = "protocol_violation"


class CallTimeout(HearthError):
    """No answer within the bound. ``rolled_back`` says what the adapter confirmed after the
    cancel: True (it undid its work), False (it said it could not), None (it never answered)."""

    kind = "timeout"

    def __init__(
        self, message: str, *, rolled_back: bool | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.rolled_back = rolled_back
        self.data = dict(data or {})

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "rolled_back": self.rolled_back}


class SlugLocked(HearthError):
    kind = "slug_locked"


class ClientClosed(HearthError):
    """A call on a client that its owner closed (not the adapter's doing: see AdapterCrashed)."""

    kind = "closed"


class StoreError(HearthError):
    """The store or the home cannot be used (corrupt file, newer schema, disk full, a path that
    is not a folder, no permission); the message names the path."""

    kind = "store_error"


class DaemonUnavailable(HearthError):
    """No hearth daemon answers at the address (no socket, connection refused, dropped)."""

    kind = "daemon_unavailable"


class Unauthorized(HearthError):
    """The daemon's TCP listener refused the request: no bearer token, or not its token."""

    kind = "unauthorized"


class Forbidden(HearthError):
    """The daemon knows who asks but that principal may not do this: its token (or the Unix
    socket, narrowed by ``--socket-scopes``) lacks ``scope`` (``read``, ``operate`` or
    ``admin``), the one the route needs (403)."""

    kind = "forbidden"

    def __init__(self, message: str, scope: str | None = None) -> None:
        super().__init__(message)
        self.scope = scope

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "scope": self.scope}


class Unavailable(HearthError):
    """The daemon is stopping: it still answers reads and cancels while the work in flight
    drains, but starts no new work (503). ``retry_after`` is the seconds after which asking
    again makes sense (a new daemon may be serving by then); a ``RemoteHost`` keyed start asks
    again on its own, within its ``reconnect`` bound, as through an outage."""

    kind = "unavailable"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "retry_after": self.retry_after}


class AdapterError(HearthError):
    """The adapter answered a request with a protocol error."""

    code: int
    data: dict[str, Any]

    def __init__(self, message: str, code: int, data: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.data = dict(data)

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The protocol's kind the adapter's ``data`` names, else its code's (a kind outside
        the protocol's is its code's, so the kinds an error can have stay a closed set)."""
        named = self.data.get("kind")
        if isinstance(named, str) and named in codes.ERROR_KINDS.values():
            return named
        return codes.kind_of(self.code)

    def to_json(self) -> dict[str, Any]:
        extra = {key: value for key, value in self.data.items() if key not in ("kind", "retryable")}
        return {**super().to_json(), "code": self.code, **extra}


class Conflict(AdapterError):
    """The request conflicts with what exists: ``reason`` (one of ``CONFLICT_REASONS``) says
    how, ``existing`` what exists (when known)."""

    @property
    def existing(self) -> DeploymentRef | None:
        from hearth_adaptersdk import DeploymentRef  # the models load only when needed

        value = self.data.get("existing")
        return DeploymentRef.model_validate(value) if isinstance(value, dict) else None

    @property
    def reason(self) -> str:
        """One of ``CONFLICT_REASONS``: ``backend`` for an adapter's conflict not named further."""
        value = self.data.get("reason")
        return value if isinstance(value, str) and value in CONFLICT_REASONS else "backend"

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "reason": self.reason}


class InvalidTransition(AdapterError):
    @property
    def state(self) -> str | None:
        value = self.data.get("state")
        return str(value) if value is not None else None


class Unsupported(AdapterError):
    @property
    def reason(self) -> str:
        return str(self.data.get("reason") or self.message)


class InvalidProfile(AdapterError):
    @property
    def errors(self) -> list[str]:
        return [str(item) for item in self.data.get("errors") or []]


class BackendUnavailable(AdapterError):
    pass


class BackendFailure(AdapterError):
    @property
    def rolled_back(self) -> bool:
        return bool(self.data.get("rolled_back"))

    @property
    def logs(self) -> list[str]:
        return [str(item) for item in self.data.get("logs") or []]


class Cancelled(AdapterError):
    pass


_BY_CODE: dict[int, type[AdapterError]] = {
    codes.CONFLICT: Conflict,
    codes.INVALID_TRANSITION: InvalidTransition,
    codes.UNSUPPORTED: Unsupported,
    codes.INVALID_PROFILE: InvalidProfile,
    codes.BACKEND_UNAVAILABLE: BackendUnavailable,
    codes.BACKEND_FAILURE: BackendFailure,
    codes.CANCELLED: Cancelled,
}


def from_wire_error(adapter: str, code: int, message: str, data: Any) -> AdapterError:
    """The one translation of a wire error into the host's tree."""
    payload = data if isinstance(data, dict) else {"kind": codes.kind_of(code), "detail": data}
    payload.setdefault("kind", codes.kind_of(code))
    cls = _BY_CODE.get(code, AdapterError)
    problems = payload.get("errors")
    if isinstance(problems, list) and problems:  # say which key is wrong, not only that one is
        shown = "; ".join(str(item) for item in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        message = f"{message}: {shown}{more}"
    return cls(f"{adapter}: {message}", code, payload)


_BY_KIND: dict[str, type[HearthError]] = {
    cls.kind: cls
    for cls in (
        InvalidInput,
        NotFound,
        Busy,
        Interrupted,
        AdapterNotFound,
        AdapterRefused,
        ProtocolViolation,
        SlugLocked,
        ClientClosed,
        StoreError,
        DaemonUnavailable,
        Unauthorized,
    )
}


def error_from_json(error: Mapping[str, Any]) -> HearthError:
    """The typed error an operation's recorded ``error`` (or the daemon's error body) stands for
    (``Operation.result`` raises it in a process other than the one that ran the work), with
    the ``retryable`` it says, if it says one."""
    typed = _typed(error)
    said = error.get("retryable")
    if isinstance(said, bool):
        typed.said_retryable = said
    return typed


def _typed(error: Mapping[str, Any]) -> HearthError:
    kind = str(error.get("kind") or "error")
    message = str(error.get("message") or kind)
    data = {key: value for key, value in error.items() if key not in ("message", "code")}
    if kind == "adapter_crashed":
        crashed = AdapterCrashed("?", error.get("exit_code"), error.get("stderr_tail") or [])
        crashed.message = message
        crashed.args = (message,)
        return crashed
    if kind == "timeout":
        return CallTimeout(message, rolled_back=error.get("rolled_back"))
    if kind == "busy":
        return Busy(message, error.get("operation"))
    if kind == "forbidden":
        scope = error.get("scope")
        return Forbidden(message, scope if isinstance(scope, str) else None)
    if kind == "unavailable":
        after = error.get("retry_after")
        return Unavailable(message, after if isinstance(after, int) and not isinstance(after, bool) else None)
    if kind in ("invalid_input", "not_found"):
        problems = error.get("errors")
        listed = [item for item in problems if isinstance(item, dict)] if isinstance(problems, list) else None
        return (InvalidInput if kind == "invalid_input" else NotFound)(message, listed)
    if kind in _BY_KIND:
        return _BY_KIND[kind](message)
    code = error.get("code")
    if not isinstance(code, int):
        code = codes.CANCELLED if kind == "cancelled" else None
    if code is not None:
        return _BY_CODE.get(code, AdapterError)(message, code, data)
    return HearthError(message)


__all__ = [
    "CONFLICT_REASONS",
    "RETRYABLE",
    "AdapterCrashed",
    "AdapterError",
    "AdapterNotFound",
    "AdapterRefused",
    "BackendFailure",
    "BackendUnavailable",
    "Busy",
    "CallTimeout",
    "Cancelled",
    "ClientClosed",
    "Conflict",
    "DaemonUnavailable",
    "Forbidden",
    "HearthError",
    "Interrupted",
    "InvalidInput",
    "InvalidProfile",
    "InvalidTransition",
    "NotFound",
    "ProtocolViolation",
    "SlugLocked",
    "StoreError",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
    "error_from_json",
    "from_wire_error",
    "retryable_kind",
]
