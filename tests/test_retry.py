"""framework.retry: full-jitter delays stay inside their doubling window; attempt deadlines
double per attempt within ``[1, 1 + jitter)`` and never pass the ceiling; bad inputs are
refused naming the value."""

from __future__ import annotations

import math
import random

import pytest

from framework.retry import attempt_deadline, backoff_delay


def test_a_delay_is_drawn_from_the_whole_doubling_window_up_to_the_cap() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        window = min(0.5, 0.02 * 2**attempt)
        delays = [backoff_delay(0.02, 0.5, attempt, rng) for _ in range(400)]
        assert all(0.0 <= d < window for d in delays)
        # Full jitter: the low half of the window is used as much as the high half.
        low = sum(d < window / 2 for d in delays)
        assert 120 < low < 280
    assert backoff_delay(0.02, 0.5, 10_000, rng) < 0.5  # no overflow past the cap


def test_an_attempt_deadline_doubles_with_jitter_and_stays_under_the_ceiling() -> None:
    rng = random.Random(5)
    assert attempt_deadline(0.1, 0, 10.0, rng) == 0.1
    for attempt in range(1, 6):
        value = attempt_deadline(0.1, attempt, 10.0, rng)
        assert 0.1 * 2**attempt <= value < 0.1 * 2**attempt * 1.5
    assert attempt_deadline(0.1, 200, 10.0, rng) == 10.0
    assert attempt_deadline(0.1, 3, math.inf, rng, jitter=0.0) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda r: backoff_delay(-1.0, 1.0, 0, r), "base must be"),
        (lambda r: backoff_delay(0.1, math.nan, 0, r), "cap must be"),
        (lambda r: backoff_delay(0.1, 1.0, -1, r), "attempt must be >= 0, not -1"),
        (lambda r: attempt_deadline(0.1, 1, math.nan, r), "ceiling must be"),
        (lambda r: attempt_deadline(0.1, 1, 1.0, r, jitter=-0.5), "jitter must be"),
    ],
)
def test_bad_inputs_are_refused_naming_the_value(call, named: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=named):
        call(random.Random(1))
