"""Bounded repetition of log lines (pure: the clock is passed in)."""

from __future__ import annotations

from ingest.logs import Repeats


def test_a_repeating_condition_is_logged_once_a_minute_with_its_count() -> None:
    now = [0.0]
    repeats = Repeats(every=60, clock=lambda: now[0])
    seen = []
    for _ in range(1800):  # a retry every 2 s for an hour
        seen.append(repeats.due("postgres"))
        now[0] += 2
    logged = [n for n in seen if n is not None]
    assert len(logged) == 60  # a line a minute, not 1,800
    assert logged[0] == 1 and set(logged[1:]) == {30}  # each line stands for 30 tries
    assert sum(logged) == 1 + 59 * 30 and seen.count(None) == 1800 - 60
    assert repeats.due("disk") == 1  # keys are independent
