"""trainer.loop: the epoch loop, time budget and resume point that fit and teach share."""
from __future__ import annotations

import json

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


class Counting(loop.EpochJob):
    """A job whose epoch `e` scores `scores[e - 1]` on dev and whose weights are one tensor
    holding the epochs trained; `kill_best` raises in save_best at that epoch (a kill between
    the resume point and the selected weights)."""

    def __init__(self, scores, kill_best=None, stop_after=None):
        self.scores, self.kill_best, self.stop_after = scores, kill_best, stop_after
        self.weights, self.best, self.trained = torch.zeros(1), {}, []
        self.budget = loop.TimeBudget(None)

    def train_epoch(self, epoch):
        self.trained.append(epoch)
        self.weights += 1
        return {"train_loss": 1.0 / epoch}, epoch == self.stop_after

    def score(self):
        return {"dev_f1": self.scores[int(self.weights) - 1]}

    def state(self):
        return {"weights": self.weights.clone()}

    def load_state(self, state):
        self.weights = state["weights"].clone()

    def save_best(self, epoch):
        if epoch == self.kill_best:
            raise KeyboardInterrupt
        self.best[epoch] = float(self.weights)


def test_the_loop_selects_the_first_best_epoch_and_a_resume_repairs_the_weights_a_kill_left_unsaved(tmp_path):
    point = loop.ResumePoint(tmp_path / "state.pt", {"lr": 0.1})
    whole = Counting([50, 70, 70, 60])
    history, best = loop.EpochLoop(4, "dev_f1").run(whole)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and best["epoch"] == 2 and sorted(whole.best) == [1, 2]

    killed = Counting([50, 70, 70, 60], kill_best=2)  # epoch 2's state is written, its weights are not
    with pytest.raises(KeyboardInterrupt):
        loop.EpochLoop(4, "dev_f1", point).run(killed)
    messages = []
    again = Counting([50, 70, 70, 60])
    history, best = loop.EpochLoop(4, "dev_f1", point, log=messages.append).run(again, resume=True)
    assert again.trained == [3, 4]  # epochs 1 and 2 were not trained again
    assert again.best == {2: 2.0}  # the selected weights the kill left unsaved, from the state
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and best["epoch"] == 2
    assert messages[0] == "resume: 2 epochs done, continuing with epoch 3"
    assert [json.loads(m)["epoch"] for m in messages[1:]] == [3, 4]  # each new epoch's row, logged


def test_a_run_the_budget_ended_trains_no_more_and_only_the_main_rank_writes(tmp_path):
    point = loop.ResumePoint(tmp_path / "state.pt", {})
    loop.EpochLoop(5, "dev_f1", point).run(Counting([1, 2, 3, 4, 5], stop_after=2))
    messages, again = [], Counting([1, 2, 3, 4, 5])
    history, _ = loop.EpochLoop(5, "dev_f1", point, log=messages.append).run(again, resume=True)
    assert again.trained == [] and [r["epoch"] for r in history] == [1, 2]
    assert messages == ["resume: 2 epochs done, training had ended (the time budget ended it)"]  # no row again

    other = loop.ResumePoint(tmp_path / "rank1.pt", {})
    rank1 = Counting([1, 2])
    assert loop.EpochLoop(2, "dev_f1", other, main=False).run(rank1) == ([], None)
    assert rank1.trained == [1, 2] and not other.path.exists() and rank1.best == {}


def test_a_state_of_an_older_trainer_is_refused_with_what_to_do(tmp_path):
    point = loop.ResumePoint(tmp_path / "state.pt", {})
    point.save({"epoch": 1, "best": "{}"})  # the states before the shared loop kept no history
    with pytest.raises(InvalidInput, match="older trainer.*start the run again"):
        loop.EpochLoop(2, "dev_f1", point).run(Counting([1, 2]), resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        loop.EpochLoop(2, "dev_f1").run(Counting([1, 2]), resume=True)
