"""trainer.loop: the time budget that fit and teach share, and the resume point's check."""
from __future__ import annotations

import pytest
import torch

import trainer.loop as loop
from common.errors import InvalidInput


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_time_budget_fits_the_units_its_seconds_allow_and_counts_the_time_before_a_resume(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(loop.time, "perf_counter", clock)
    budget = loop.TimeBudget(50.0)
    assert budget.fits(0, 10) == 10  # nothing measured yet
    clock.now += 20.0  # 2 units in 20 s: 5 fit in 50 s
    assert (budget.fits(2, 10), budget.over()) == (5, False)
    assert budget.fits(2, 4) == 4  # never more than the schedule has
    clock.now += 40.0  # 60 s for 3: over, and the schedule is never shorter than done + 1
    assert (budget.fits(3, 10), budget.over()) == (4, True)
    again = loop.TimeBudget(50.0)
    again.resume(45.0)  # a resumed run counts the 45 s its finished units took
    assert again.elapsed() == pytest.approx(45.0) and not again.over()
    clock.now += 6.0
    assert again.over()
    unbounded = loop.TimeBudget(None)
    clock.now += 1e6
    assert (unbounded.fits(3, 10), unbounded.over()) == (10, False)


def test_a_resume_point_refuses_changed_settings_but_not_one_added_since_and_off(tmp_path):
    old = loop.ResumePoint(tmp_path / "state.pt", {"lr": 0.1})
    old.save({"epoch": 1})
    assert loop.ResumePoint(old.path, {"lr": 0.1, "max_train_seconds": None}).load()["epoch"] == 1
    with pytest.raises(InvalidInput, match="max_train_seconds='unset', now 60"):
        loop.ResumePoint(old.path, {"lr": 0.1, "max_train_seconds": 60}).load()
    with pytest.raises(InvalidInput, match="lr=0.1, now 0.2"):
        loop.ResumePoint(old.path, {"lr": 0.2}).load()
    assert torch.load(old.path, weights_only=True)["epoch"] == 1
