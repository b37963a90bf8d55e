"""The move-state machine: one place (state.check_transition) decides which state may follow which."""

from __future__ import annotations

import pytest

from orgmove.errors import MoveStateError
from orgmove.state import AFTER_FLIP, MoveState, allowed_transitions, check_transition


def test_the_normal_path_is_allowed() -> None:
    path = ["planned", "copying", "copied", "verified", "cutover", "committed", "cleaning", "cleaned"]
    for old, new in zip(path, path[1:], strict=False):
        assert check_transition(old, new) == MoveState(new)


@pytest.mark.parametrize(("old", "new"), [
    ("committed", "copying"), ("cleaning", "rolled_back"), ("cleaned", "cutover"),
    ("planned", "committed"), ("copied", "cleaning"), ("rolled_back", "copying"),
])
def test_illegal_transitions_raise(old: str, new: str) -> None:
    with pytest.raises(MoveStateError, match=f"cannot become {new}"):
        check_transition(old, new)


def test_nothing_leaves_the_flipped_states_backwards() -> None:
    """Except a rollback through the reverse stream, before cleanup (orgmove/reverse.py)."""
    backwards = [(old, new) for old, new in allowed_transitions() if old in AFTER_FLIP and new not in AFTER_FLIP]
    assert backwards == [(MoveState.COMMITTED, MoveState.ROLLED_BACK)]


def test_staying_in_a_state_is_allowed_and_unknown_states_are_refused() -> None:
    for s in MoveState:
        assert check_transition(s, s) is s
    with pytest.raises(ValueError):
        check_transition("copied", "teleported")
