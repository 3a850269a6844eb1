"""The plan file's writer: actions encoded ahead, while the planner waited for the
catalog, are written exactly as actions encoded at the end, at every chunk boundary."""

from __future__ import annotations

import json

import pytest

from policyd.planner import plan as plan_module
from policyd.planner.plan import Blocked, Plan


def _plan(actions: int) -> Plan:
    plan = Plan("aps", 1795507200.0, "sha256:0")
    for n in range(actions):
        plan.new_action(
            "copy",
            "8IDI/layout",
            "place",
            "Smith-Mar18",
            file=f'pix/"quoted",\n{n}.h5',  # JSON escapes, a separator inside a string
            source="daq-8idi",
            target="voyager",
            path=f"8IDI/Smith-Mar18/pix/{n}.h5",
            bytes=n,
        )
    plan.blocked.append(Blocked("r", "Smith-Mar18", "a.h5", "voyager", "min_copies"))
    return plan


@pytest.mark.parametrize("actions", [0, 1, 3, 4, 5, 8, 9, 11])
def test_actions_encoded_ahead_are_written_as_the_rest(
    actions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 4: none, one short, exact multiples and a tail."""
    monkeypatch.setattr(plan_module, "_CHUNK", 4)
    at_the_end = _plan(actions).json_bytes()
    ahead = _plan(actions)
    calls = 0
    while ahead.encode_ahead():
        calls += 1
    assert len(ahead.encoded["actions"]) == actions // 4  # whole chunks: the tail may grow
    assert calls == max(actions // 4 - 1, 0)  # each call said whether another was ready
    assert ahead.json_bytes() == at_the_end
    parsed = json.loads(at_the_end)
    assert [a["bytes"] for a in parsed["actions"]] == list(range(actions))
    assert parsed["summary"]["copy"] == actions


def test_a_chunk_is_encoded_once_and_later_actions_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Encoding while the plan still grows: the actions made later are written too."""
    monkeypatch.setattr(plan_module, "_CHUNK", 4)
    plan = _plan(5)
    assert plan.encode_ahead() is False  # one chunk encoded, the fifth action waits
    assert plan.encode_ahead() is False and len(plan.encoded["actions"]) == 1
    for n in range(5, 10):
        plan.new_action("verify", "8IDI/layout", "place", "Smith-Mar18", file=f"{n}.h5")
    assert plan.encode_ahead() is False and len(plan.encoded["actions"]) == 2
    written = json.loads(plan.json_bytes())
    assert [a["id"] for a in written["actions"]] == [f"a{n}" for n in range(1, 11)]
    assert written == json.loads(_plan_with_verifies().json_bytes())


def _plan_with_verifies() -> Plan:
    plan = _plan(5)
    for n in range(5, 10):
        plan.new_action("verify", "8IDI/layout", "place", "Smith-Mar18", file=f"{n}.h5")
    return plan


def test_blocked_deletes_are_encoded_ahead_after_the_actions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plan_module, "_CHUNK", 4)
    plan = _plan(4)
    for n in range(8):
        plan.blocked.append(Blocked("r", "E", f"{n}.h5", "voyager", "pinned"))
    at_the_end = plan.json_bytes()  # 9 blocked: two chunks and one
    assert plan.encode_ahead() is True  # the actions' chunk; the blocked are ready
    assert [len(plan.encoded[k]) for k in ("actions", "blocked")] == [1, 0]
    assert plan.encode_ahead() is True
    assert plan.encode_ahead() is False
    assert [len(plan.encoded[k]) for k in ("actions", "blocked")] == [1, 2]
    assert plan.json_bytes() == at_the_end
    assert len(json.loads(at_the_end)["blocked"]) == 9
