"""Labels, as Docker and Kubernetes say who owns what: the syntax of a key and a value
(Kubernetes'), and the most a workspace carries, checked in this one place for every caller (the
host, the API, and ``hearth ls --label`` on the standard library alone: this module loads no
more than the error tree)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ._errors import InvalidInput

#: The most labels a workspace carries.
LABELS_MAX = 64
#: A label's name (a key's part after its prefix) and a non-empty value: Kubernetes' syntax.
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?")
#: A key's optional prefix: a DNS subdomain (at most 253 characters).
LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _echo(value: object, size: int = 80) -> str:
    """``repr`` of a caller's input, cut (as ``_checks.echo``)."""
    text = repr(value)
    return text if len(text) <= size else text[:size] + "…"


def check_label_key(key: object) -> str:
    """A label key in Kubernetes' syntax: an optional DNS-subdomain prefix (at most 253
    characters) and ``/``, then a name of 1 to 63 letters, digits, ``-``, ``_`` and ``.``
    starting and ending with a letter or digit."""
    if isinstance(key, str):
        prefix, slash, name = key.rpartition("/")
        if (
            LABEL_NAME.fullmatch(name)
            and len(name) <= 63
            and (not slash or (len(prefix) <= 253 and LABEL_PREFIX.fullmatch(prefix)))
        ):
            return key
    raise InvalidInput(
        f"label key {_echo(key)} is not valid: use an optional DNS subdomain prefix and '/', then "
        "1 to 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    )


def check_label_value(key: str, value: object) -> str:
    """A label value in Kubernetes' syntax: empty, or a label name (at most 63 characters)."""
    if isinstance(value, str) and (value == "" or (len(value) <= 63 and LABEL_NAME.fullmatch(value))):
        return value
    raise InvalidInput(
        f"label {key!r} has an invalid value {_echo(value)}: use at most 63 letters, digits, '-', "
        "'_' and '.', starting and ending with a letter or digit (or nothing)"
    )


def check_labels(labels: Mapping[str, object] | None, *, removals: bool = False) -> dict[str, str | None]:
    """Labels as a caller passed them, checked; with ``removals``, a value None removes its key."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidInput(f"labels must map keys to values, not {_echo(labels)}")
    checked: dict[str, str | None] = {}
    for given, value in labels.items():
        key = check_label_key(given)
        checked[key] = None if value is None and removals else check_label_value(key, value)
    label_count(checked)
    return checked


def labels_given(labels: Mapping[str, object] | None) -> dict[str, str]:
    """Labels to set (or to match), checked: each maps to a value."""
    return {key: value for key, value in check_labels(labels).items() if value is not None}


def label_count(labels: Mapping[str, object]) -> None:
    if len(labels) > LABELS_MAX:
        raise InvalidInput(f"a workspace carries at most {LABELS_MAX} labels, not {len(labels)}")
