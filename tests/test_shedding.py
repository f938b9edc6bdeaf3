"""The queue bound on its own: sized from the measured answer rate, with a fake clock.

Over HTTP (queue full, deadline, metrics, health during a burst): tests/test_serving.py.
"""

from __future__ import annotations

import pytest

from serving.shedding import RATE_WINDOW_S, Admission, Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answer(admission: Admission, n: int) -> None:
    for _ in range(n):
        with admission.slot() as place:
            place.answered = True


def test_the_bound_follows_the_answer_rate_and_never_falls_below_two_batches() -> None:
    clock = Clock()
    admission = Admission(None, batch_size=8, timeout_s=5.0, clock=clock)
    assert admission.limit() == 16  # nothing measured yet: two batches
    answer(admission, 600)  # 300 answers/s over the window
    assert admission.rate() == 600 / RATE_WINDOW_S
    assert admission.limit() == 300  # what is answered in one second
    clock.now += RATE_WINDOW_S + 0.1  # the answers age out of the window
    assert admission.limit() == 16


def test_a_short_deadline_shortens_the_queue() -> None:
    clock = Clock()
    admission = Admission(None, batch_size=8, timeout_s=0.5, clock=clock)
    answer(admission, 600)
    assert admission.limit() == 75  # a quarter second of answers: half the deadline


def test_refusals_and_errors_are_not_counted_as_answers() -> None:
    admission = Admission(None, batch_size=8, clock=Clock())
    with admission.slot():
        pass  # a 4xx: left without marking the place answered
    with pytest.raises(RuntimeError), admission.slot():
        raise RuntimeError("boom")
    assert admission.rate() == 0 and admission.in_flight == 0


def test_past_the_bound_is_overloaded_with_the_time_to_drain() -> None:
    clock = Clock()
    admission = Admission(3, batch_size=8, clock=clock)
    answer(admission, 4)  # 2 answers/s
    with admission.slot(), admission.slot(), admission.slot():
        assert admission.in_flight == 3
        with pytest.raises(Overloaded) as caught, admission.slot():
            pass
    assert caught.value.reason == "queue_full"
    assert caught.value.retry_after_s == 2  # 3 in flight at 2 answers/s: 1.5 s, rounded up
    assert admission.in_flight == 0


def test_zero_means_no_bound() -> None:
    admission = Admission(0, batch_size=1, clock=Clock())
    assert admission.limit() is None
    slots = [admission.slot() for _ in range(1000)]
    for slot in slots:
        slot.__enter__()
    assert admission.in_flight == 1000 and not admission.full()
