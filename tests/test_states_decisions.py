"""The lifecycle decisions that moved into ``_states.py`` (issue 19), as tables: what a failed,
timed-out or cancelled verb records, the line that says what became of cancelled work (one
wording for ``Host`` and ``RemoteHost``), admission's key and busy rules, ``Host.plan``'s verb,
and reconcile's settlement."""

from __future__ import annotations

from typing import Any

import pytest

from hearth import Conflict
from hearth._states import (
    CancelOutcome,
    Recorded,
    Settlement,
    TimeoutOutcome,
    Verb,
    after_cancel,
    after_timeout,
    answers_noop,
    binds_key,
    busy_message,
    cancel_note,
    cancel_outcome_recorded,
    cancel_refused,
    dead_owner_end,
    failure_reason,
    failure_unconfirmed,
    final_event_waits,
    key_released,
    needs_status,
    noop_answer,
    preview_verb,
    resolution_note,
    same_key,
    settled_note,
    settlement,
    start_not_recorded,
    uncertain_verb,
    unconfirmed_reason,
)


@pytest.mark.parametrize(
    ("answered", "backend_lost", "unconfirmed"),
    [(True, False, False), (True, True, True), (False, False, True), (False, True, True)],
)
def test_a_failure_is_unconfirmed_unless_the_adapter_answered_and_kept_its_backend(
    answered: bool, backend_lost: bool, unconfirmed: bool
) -> None:
    assert failure_unconfirmed(answered=answered, backend_lost=backend_lost) is unconfirmed
    reason = failure_reason("boom", unconfirmed)
    assert reason.startswith("boom")
    assert ("reconcile checks it" in reason) is unconfirmed


@pytest.mark.parametrize(
    ("verb", "reason", "expected"),
    [
        ("provision", "timed out", "timed out; rollback not confirmed: the backend may still hold"),
        ("teardown", "cancelled", "cancelled; teardown not confirmed: the backend may still hold"),
        (
            "upgrade",
            "stopped; the rollback is not confirmed",
            "stopped; rollback not confirmed: the backend may still hold",
        ),
    ],
)
def test_an_unconfirmed_record_says_what_is_not_confirmed_once(
    verb: Verb, reason: str, expected: str
) -> None:
    assert unconfirmed_reason(verb, reason).startswith(expected)


@pytest.mark.parametrize(
    ("verb", "rolled_back", "expected"),
    [
        ("provision", True, "unchanged"),
        ("provision", False, "unconfirmed"),
        ("provision", None, "unconfirmed"),
        ("upgrade", True, "unchanged"),
        ("teardown", True, "settle_teardown"),
        ("teardown", False, "settle_teardown"),
        ("teardown", None, "unconfirmed"),
    ],
)
def test_what_a_timed_out_verb_records(
    verb: Verb, rolled_back: bool | None, expected: TimeoutOutcome
) -> None:
    assert after_timeout(verb, rolled_back) == expected


@pytest.mark.parametrize(
    ("verb", "succeeded", "answered", "cancelled", "data", "expected"),
    [
        ("provision", True, True, False, {}, "succeeded"),
        ("provision", False, False, False, {}, "unanswered"),
        ("provision", False, True, False, {}, "failed"),
        ("provision", False, True, True, {}, "rolled_back"),
        ("provision", False, True, True, {"rolled_back": True}, "rolled_back"),
        ("provision", False, True, True, {"rolled_back": False}, "not_rolled_back"),
        ("upgrade", False, True, True, {"rolled_back": False}, "not_rolled_back"),
        ("teardown", False, True, True, {}, "settle_teardown"),
        ("teardown", False, True, True, {"rolled_back": True}, "settle_teardown"),
        ("teardown", False, False, False, {}, "unanswered"),
    ],
)
def test_what_a_cancelled_verb_records(  # noqa: PLR0917 - the table's columns
    verb: Verb,
    succeeded: bool,
    answered: bool,
    cancelled: bool,
    data: dict[str, Any],
    expected: CancelOutcome,
) -> None:
    assert (
        after_cancel(verb, succeeded=succeeded, answered=answered, cancelled=cancelled, data=data) == expected
    )


@pytest.mark.parametrize(
    ("state", "verb", "unconfirmed", "error", "expected"),
    [
        ("succeeded", "provision", False, {}, "succeeded"),
        ("cancelled", "provision", True, {"kind": "cancelled"}, "unanswered"),
        ("cancelled", "teardown", False, {"kind": "cancelled"}, "settle_teardown"),
        ("failed", "upgrade", False, {"kind": "backend_failure"}, "failed"),
        ("cancelled", "upgrade", False, {"kind": "cancelled", "rolled_back": False}, "not_rolled_back"),
        ("cancelled", "upgrade", False, {"kind": "cancelled", "rolled_back": True}, "rolled_back"),
        ("interrupted", "provision", False, {"kind": "interrupted"}, "rolled_back"),
    ],
)
def test_a_daemons_client_reads_the_same_outcome_back_from_the_records(
    state: str, verb: str, unconfirmed: bool, error: dict[str, Any], expected: CancelOutcome
) -> None:
    assert cancel_outcome_recorded(state, verb, unconfirmed=unconfirmed, error=error) == expected


@pytest.mark.parametrize(
    ("how", "options", "line"),
    [
        (
            "succeeded",
            {},
            "provision of 'a' had finished before the cancel took effect; it is recorded as done",
        ),
        (
            "unanswered",
            {},
            "provision of 'a' was told to cancel; its rollback is not confirmed (reconcile checks it)",
        ),
        (
            "failed",
            {"error_kind": "backend_failure", "recorded": "failed"},
            "provision of 'a' was cancelled and the adapter answered with an error (backend_failure); "
            "the workspace is recorded failed",
        ),
        (
            "failed",
            {"error_kind": "conflict"},
            "provision of 'a' was cancelled and the adapter answered with an error (conflict); "
            "the workspace is recorded nowhere (nothing changed)",
        ),
        (
            "settle_teardown",
            {"observed": "ready", "recorded": "ready"},
            "provision of 'a' was cancelled; the backend shows ready, the workspace is recorded ready",
        ),
        (
            "settle_teardown",
            {"recorded": "failed"},
            "provision of 'a' was cancelled; the workspace is recorded failed",
        ),
        ("rolled_back", {}, "provision of 'a' was cancelled and rolled back"),
        (
            "rolled_back",
            {"previous": "ready"},
            "provision of 'a' was cancelled and rolled back; the workspace is ready as before",
        ),
        (
            "not_rolled_back",
            {},
            "provision of 'a' was cancelled; the adapter could not confirm its rollback "
            "(reconcile checks it)",
        ),
    ],
)
def test_one_wording_for_what_became_of_cancelled_work(
    how: CancelOutcome, options: dict[str, str], line: str
) -> None:
    assert cancel_note("provision", "a", how, **options) == line


@pytest.mark.parametrize(
    ("used", "asked", "same"),
    [
        (("a", "provision", "solo", "fake"), ("a", "provision", "solo", "fake"), True),
        (("a", "provision", "solo", "fake"), ("a", "provision", "team", "fake"), False),
        (("a", "provision", "solo", "fake"), ("b", "provision", "solo", "fake"), False),
        (("a", "upgrade", "team", "fake"), ("a", "upgrade", "team", "fake"), True),
        (("a", "upgrade", "team", "fake"), ("a", "teardown", None, "fake"), False),
        (("a", "teardown", None, "fake"), ("a", "teardown", None, "docker"), True),
    ],
)
def test_a_used_key_returns_its_operation_only_for_the_same_ask(
    used: tuple[str, str, str | None, str | None], asked: tuple[str, str, str | None, str | None], same: bool
) -> None:
    assert same_key(used, asked) is same


WRITE_FAILED = {"kind": "store_error", "message": "a store write failed: disk full", "changed_nothing": True}


@pytest.mark.parametrize(
    ("state", "error", "released"),
    [
        ("failed", WRITE_FAILED, True),
        ("failed", start_not_recorded("disk full"), True),
        ("failed", dead_owner_end("queued", own=True, shared=False, owner="o", finder="o")[1], True),
        ("failed", {**WRITE_FAILED, "changed_nothing": False}, False),  # the adapter may have worked
        ("failed", {k: v for k, v in WRITE_FAILED.items() if k != "changed_nothing"}, False),
        ("failed", {"kind": "invalid_transition", "message": "no", "changed_nothing": True}, False),
        ("failed", None, False),
        ("interrupted", {**WRITE_FAILED, "kind": "interrupted"}, False),
        ("queued", WRITE_FAILED, False),
        ("running", WRITE_FAILED, False),
        ("succeeded", None, False),
        ("cancelled", {"kind": "cancelled", "message": "no", "changed_nothing": True}, False),
    ],
)
def test_a_key_is_released_to_a_retry_only_when_its_start_failed_on_a_store_write(
    state: str, error: dict[str, Any] | None, released: bool
) -> None:
    assert key_released(state, error) is released


@pytest.mark.parametrize(
    ("key", "operation_key", "binds"),
    [
        ("idemB", "idemA", True),  # joined another key's operation: bound to it for good
        ("idemB", None, True),  # joined (or answered by) an operation started without a key
        ("idemA", "idemA", False),  # its own operation: the key is already its own
        (None, "idemA", False),  # no key: nothing to bind
        (None, None, False),
    ],
)
def test_a_key_is_bound_to_the_operation_it_joined_unless_it_is_that_operations_own(
    key: str | None, operation_key: str | None, binds: bool
) -> None:
    assert binds_key(key, operation_key) is binds


#: (id, generation, verb) of a slug's succeeded operations.
SUCCEEDED = [(1, 1, "provision"), (2, 1, "upgrade"), (3, 1, "teardown"), (4, 2, "adopt"), (7, 2, "provision")]


@pytest.mark.parametrize(
    ("state", "generation", "succeeded", "answer"),
    [
        ("ready", 1, SUCCEEDED[:2], 2),  # the upgrade made it what it is
        ("ready", 1, SUCCEEDED[:1], 1),
        ("tier_torn_down", 1, SUCCEEDED, 3),  # the teardown, of its own generation
        ("ready", 2, SUCCEEDED, 7),  # the last of its generation only
        ("ready", 2, SUCCEEDED[:4], 4),  # adopted
        ("ready", 3, SUCCEEDED, None),  # none of its generation (reconcile settled it): a no-op
        ("tier_torn_down", 2, SUCCEEDED, None),
        ("ready", 1, [], None),
    ],
)
def test_a_start_with_nothing_to_do_answers_the_operation_that_made_the_record(
    state: str, generation: int, succeeded: list[tuple[int, int, str]], answer: int | None
) -> None:
    assert noop_answer(state, generation, succeeded) == answer


@pytest.mark.parametrize(
    ("key", "made", "answers"),
    [
        (None, ("a", "upgrade", "team", "fake"), True),  # no key: what made it answers
        ("k", ("a", "provision", "team", "fake"), True),  # the key can name it
        ("k", ("a", "upgrade", "team", "fake"), False),  # a replay would conflict: a no-op keeps it
        ("k", ("a", "adopt", "team", "fake"), False),
    ],
)
def test_the_operation_that_made_a_workspace_answers_a_keyed_no_op_only_if_its_key_can_name_it(
    key: str | None, made: tuple[str, str, str, str], answers: bool
) -> None:
    assert answers_noop(key, made, ("a", "provision", "team", "fake")) is answers


@pytest.mark.parametrize(
    ("state", "refused"),
    [
        ("queued", False),
        ("running", False),
        ("succeeded", True),
        ("failed", True),
        ("cancelled", True),
        ("interrupted", True),
    ],
)
def test_a_cancel_of_a_finished_operation_is_an_invalid_transition(state: str, refused: bool) -> None:
    error = cancel_refused(7, state)
    if not refused:
        assert error is None
        return
    assert error is not None and error.kind == "invalid_transition" and error.state == state
    assert error.to_json()["operation"] == 7
    assert error.message == f"operation #7 is {state}: a finished operation cannot be cancelled"


def test_a_start_not_recorded_says_a_store_write_failed_and_that_nothing_changed() -> None:
    assert start_not_recorded("the store x cannot be used: disk full") == {
        "kind": "store_error",
        "message": "a store write failed: the store x cannot be used: disk full; nothing was changed",
        "changed_nothing": True,
    }


@pytest.mark.parametrize(
    ("state", "own", "shared", "ended", "kind", "says", "changed_nothing"),
    [
        (
            "queued",
            True,
            False,
            "failed",
            "store_error",
            "its start was not recorded: a store write failed",
            True,
        ),
        (
            "queued",
            True,
            True,
            "failed",
            "store_error",
            "its start was not recorded: a store write failed",
            True,
        ),
        (
            "running",
            True,
            False,
            "interrupted",
            "interrupted",
            "its outcome was not recorded: a store write",
            None,
        ),
        (
            "running",
            True,
            True,
            "interrupted",
            "interrupted",
            "its outcome was not recorded: a store write",
            None,
        ),
        ("queued", False, False, "interrupted", "interrupted", "the hearth process running it stopped", None),
        (
            "running",
            False,
            False,
            "interrupted",
            "interrupted",
            "the hearth process running it stopped",
            None,
        ),
        ("queued", False, True, "interrupted", "interrupted", "its host h:1:a held no lease", None),
        ("running", False, True, "interrupted", "interrupted", "its host h:1:a held no lease", None),
    ],
)
def test_how_an_operation_with_no_live_work_is_ended(  # noqa: PLR0917 - the table's columns
    state: str, own: bool, shared: bool, ended: str, kind: str, says: str, changed_nothing: bool | None
) -> None:
    """Another host's operation: its host stopped. This host's own: a store write failed; still
    queued, nothing reached the adapter (failed, changed nothing); running, nobody knows."""
    got, error = dead_owner_end(state, own=own, shared=shared, owner="h:1:a", finder="h:2:b")
    assert (got, error["kind"], error.get("changed_nothing")) == (ended, kind, changed_nothing)
    assert error["message"].startswith(says)
    assert ("a store write failed" in error["message"]) is own
    if shared and not own:
        assert error["message"].endswith("taken over by h:2:b")


def test_busy_names_the_operation_and_an_upgrades_tier() -> None:
    assert busy_message("a", 7, "upgrade", "team", "running") == (
        "workspace 'a' is busy: operation #7 (upgrade to team) is running"
    )
    assert busy_message("a", 7, "provision", "team", "queued") == (
        "workspace 'a' is busy: operation #7 (provision) is queued"
    )
    assert (
        busy_message("a", 7, "upgrade", None, "running")
        == "workspace 'a' is busy: operation #7 (upgrade) is running"
    )


@pytest.mark.parametrize(
    ("recorded", "driver", "verb"),
    [
        (None, "fake", "provision"),
        (Recorded("failed", "solo", "fake"), "docker", "provision"),
        (Recorded("tier_torn_down", "solo", "fake"), "fake", "provision"),
        (Recorded("ready", "solo", "fake"), "fake", "upgrade"),
    ],
)
def test_plan_previews_a_provision_or_an_upgrade(recorded: Recorded | None, driver: str, verb: Verb) -> None:
    assert preview_verb(recorded, "a", driver) == verb


def test_plan_refuses_to_move_a_ready_workspace_in_the_words_provision_uses() -> None:
    from hearth._states import rules

    with pytest.raises(Conflict) as previewed:
        preview_verb(Recorded("ready", "solo", "fake"), "a", "docker")
    with pytest.raises(Conflict) as provisioned:
        rules("provision", Recorded("ready", "solo", "fake"), "a", tier="solo", driver="docker")
    assert previewed.value.message == provisioned.value.message
    assert "cannot move to another driver" in previewed.value.message


@pytest.mark.parametrize(
    ("state", "unconfirmed", "listed", "asks"),
    [
        ("ready", False, True, False),
        ("ready", False, False, True),
        ("ready", True, True, True),
        ("provisioning", False, True, True),
        ("failed", False, True, False),
    ],
)
def test_reconcile_asks_about_what_the_list_does_not_settle(
    state: str, unconfirmed: bool, listed: bool, asks: bool
) -> None:
    assert needs_status(state, unconfirmed, listed=listed) is asks


@pytest.mark.parametrize(
    ("state", "unconfirmed", "last", "verb"),
    [
        ("provisioning", False, None, "provision"),
        ("upgrading", True, "provision", "upgrade"),
        ("tearing_down", False, None, "teardown"),
        ("failed", True, "upgrade", "upgrade"),
        ("failed", True, None, "provision"),
        ("ready", False, "upgrade", None),
    ],
)
def test_the_verb_that_left_a_record_uncertain(
    state: str, unconfirmed: bool, last: str | None, verb: str | None
) -> None:
    assert uncertain_verb(state, unconfirmed, last) == verb


#: What a backend that has not settled leaves in a record reconcile cannot confirm.
STILL_PROVISIONING = (
    "provision interrupted; the backend is still provisioning: "
    "reconcile looks again (if it stays so, tear the workspace down)"
)
WITH_C1 = " (its backend id, reported while it worked: c1)"


@pytest.mark.parametrize(
    ("recorded", "reason", "unconfirmed", "observed", "verb", "backend_id", "tier", "expected"),
    [
        # nothing new: a second reconcile changes nothing
        ("ready", None, False, "ready", None, None, None, None),
        ("ready", None, False, "unknown", "provision", None, None, None),
        # a ghost
        (
            "ready",
            None,
            False,
            "absent",
            None,
            "c1",
            None,
            Settlement(
                "failed",
                "ghost: the backend has no trace of this workspace "
                "(its backend id, reported while it worked: c1)",
                False,
            ),
        ),
        # an interrupted provision whose backend serves
        ("provisioning", None, False, "ready", "provision", "c1", None, Settlement("ready", None, False)),
        # an interrupted upgrade: the tier the adapter says it serves wins, and the record is settled
        (
            "upgrading",
            None,
            False,
            "ready",
            "upgrade",
            None,
            "team",
            Settlement("ready", None, False, "team"),
        ),
        # an interrupted teardown that left nothing
        (
            "tearing_down",
            None,
            False,
            "absent",
            "teardown",
            None,
            None,
            Settlement("tier_torn_down", None, False),
        ),
        # a backend still provisioning: failed, not confirmed, with the backend id
        (
            "provisioning",
            None,
            False,
            "provisioning",
            "provision",
            "c1",
            None,
            Settlement("failed", STILL_PROVISIONING + WITH_C1, True),
        ),
        # a failure not confirmed takes what the backend shows: a change, once
        (
            "failed",
            "provision timed out; rollback not confirmed",
            True,
            "provisioning",
            "provision",
            None,
            None,
            Settlement("failed", STILL_PROVISIONING, True),
        ),
        # issue 20: the same backend still provisioning is nothing new (the reason as written,
        # backend id and all), so later runs neither write nor report it
        (
            "failed",
            STILL_PROVISIONING + WITH_C1,
            True,
            "provisioning",
            "provision",
            "c1",
            None,
            None,
        ),
        ("failed", STILL_PROVISIONING, True, "provisioning", "provision", None, None, None),
        # the same settlement again is nothing new
        (
            "failed",
            "provision interrupted; the backend has no trace of it (nothing is left running)",
            False,
            "absent",
            "provision",
            None,
            None,
            None,
        ),
    ],
)
def test_reconciles_settlement_table(  # noqa: PLR0917 - the table's columns
    recorded: Any,
    reason: str | None,
    unconfirmed: bool,
    observed: str,
    verb: str | None,
    backend_id: str | None,
    tier: str | None,
    expected: Settlement | None,
) -> None:
    found = settlement(
        recorded, reason, unconfirmed, observed=observed, verb=verb, backend_id=backend_id, served_tier=tier
    )
    assert found == expected


@pytest.mark.parametrize(
    ("old", "new", "unconfirmed", "note"),
    [
        ("provisioning", "ready", False, "provisioning -> ready"),
        ("failed", "failed", False, "failed, now confirmed"),
        (
            "provisioning",
            "failed",
            True,
            "provisioning -> failed, not confirmed: the backend has not settled (reconcile looks again)",
        ),
        # issue 20: a failure not confirmed that reconcile still cannot confirm is not "now confirmed"
        (
            "failed",
            "failed",
            True,
            "failed, not confirmed: the backend has not settled (reconcile looks again)",
        ),
    ],
)
def test_the_line_that_says_what_reconcile_resolved(old: str, new: str, unconfirmed: bool, note: str) -> None:
    assert resolution_note(old, new, unconfirmed=unconfirmed) == note


@pytest.mark.parametrize(
    ("was", "record", "waits"),
    [
        ("running", ("provisioning", 1), True),  # it began and left its record transient
        ("running", ("upgrading", 1), True),
        ("running", ("tearing_down", 1), True),
        ("queued", ("provisioning", 1), False),  # never began: the record is not its own
        ("running", ("ready", 1), False),  # the record is settled already
        ("running", ("failed", 1), False),
        ("running", ("provisioning", 2), False),  # another generation's record
        ("running", None, False),  # no record left
    ],
)
def test_a_final_event_waits_for_the_settle_of_a_record_its_operation_left_transient(
    was: str, record: tuple[str, int] | None, waits: bool
) -> None:
    assert final_event_waits(was, record, 1) is waits


def test_the_settle_s_note_names_who_settled_what_and_why() -> None:
    assert settled_note("h:1:a", "provisioning", "failed", "gone") == (
        "settled by h:1:a from the adapter's status: the record went from provisioning to failed (gone)"
    )
    assert settled_note("h:1:a", "upgrading", "ready", None).endswith("from upgrading to ready")
