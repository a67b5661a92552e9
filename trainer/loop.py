"""The training loop of `trainer fit` and `trainer teach`: the epochs, the progress bar, the
resume point, the check that a resumed run brings the settings it started with, the
learning-rate schedule, the time budget that shortens it, and the choice of the epoch on dev.

A run (an EpochJob: trainer.fit's _FitRun, trainer.text_teacher's _TeachRun) brings what
differs: one epoch's training, its dev scores, its state, and where it keeps the selected
weights.  EpochLoop brings the rest.  After every epoch the loop writes one state file (the
job's weights, optimizer, scheduler and random generators; the history of rows, the seconds
spent, whether the time budget ended training; and the settings the run started with),
atomically; then, when the epoch is the best on dev so far, the job saves the selected
weights.  A kill between the two is repaired on resume: the history names the best epoch.  A
resume reads the state back only when every setting equals the saved one, and names each
that differs.
"""
from __future__ import annotations

import abc
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from common.atomic import replacing
from common.errors import InvalidInput, MissingInput


class ResumePoint:
    """The state file of one run, and the settings (a flat JSON-able dict) that run has."""

    def __init__(self, path: Path, settings: dict):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as JSON gives it back: tuples are lists

    def require(self) -> None:
        if not self.path.is_file():
            raise MissingInput(f"{self.path}: nothing to resume from")

    def check(self, state: dict | None = None) -> None:
        """Refuse a resume with other settings (InvalidInput naming each one)."""
        if state is None:
            self.require()
        state = torch.load(self.path, weights_only=True, map_location="cpu") if state is None else state
        saved = state.get("settings")
        if saved is None:  # a state written before runs kept their settings: nothing to compare
            note(f"resume: {self.path} does not record the run's settings; they are not checked")
            return
        saved = json.loads(saved)
        # A setting added since the state was written, and off (None) now, changes nothing.
        changed = [f"{k}={saved.get(k, 'unset')!r}, now {v!r}" for k, v in self.settings.items()
                   if saved.get(k, "unset") != v and not (k not in saved and v is None)]
        if changed:
            raise InvalidInput(f"{self.path.parent}: cannot resume a run with other settings or data "
                               f"({'; '.join(changed)}); start it again (another --out, or without --resume "
                               "after removing the directory)")

    def load(self, device: torch.device | str = "cpu") -> dict:
        """The saved state, once the settings are checked."""
        self.require()
        state = torch.load(self.path, weights_only=True, map_location=device)
        self.check(state)
        return state

    def save(self, state: dict) -> None:
        with replacing(self.path) as tmp:
            torch.save({**state, "settings": json.dumps(self.settings)}, tmp)


def lr_factor(step: int, total: int, warmup: int, decay: str = "cosine") -> float:
    """The learning rate's factor at optimizer step `step` of `total`: a linear warmup over
    `warmup` steps, then a cosine (fit) or linear (teach, as TelME's fine-tuning) decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    done = (step - warmup) / max(1, total - warmup)
    if decay == "linear":
        return max(0.0, 1.0 - done)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


class TimeBudget:
    """A bound on a run's training seconds, counted across resumes, and how much of a
    schedule fits in it.  A bounded run re-plans its learning-rate schedule to the steps
    (teach) or epochs (fit) that fit at the mean time per unit so far, so that it ends
    with a decayed learning rate, and stops after the unit that passes the bound."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds or None  # None (or 0): no bound
        self._start = time.perf_counter()

    def resume(self, spent: float) -> None:
        """Count the `spent` seconds of the units finished before a resume."""
        self._start = time.perf_counter() - spent

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def over(self) -> bool:
        return self.seconds is not None and self.elapsed() > self.seconds

    def fits(self, done: int, total: int) -> int:
        """Of `total` units, how many the budget allows at the mean time of the `done` so far:
        never more than `total`, never fewer than done + 1 (the stop is over()'s to call)."""
        if self.seconds is None or done <= 0:
            return total
        return min(total, max(done + 1, int(self.seconds / (self.elapsed() / done))))


def note(message: str) -> None:
    """A line on stderr that leaves a progress bar whole."""
    tqdm.write(message, file=sys.stderr)


class EpochJob(abc.ABC):
    """What one kind of run brings to EpochLoop.  `budget` is its time budget: the job decides
    where it re-plans and stops (fit after an epoch, teach within one), the loop counts the
    seconds of a resumed run's finished epochs into it."""

    budget: TimeBudget

    @abc.abstractmethod
    def train_epoch(self, epoch: int) -> tuple[dict, bool]:
        """Train epoch `epoch` (counted from 1): the training figures of its row, and whether
        the time budget ends training with it (the same answer on every rank)."""

    @abc.abstractmethod
    def score(self) -> dict[str, float]:
        """The dev scores of the weights now, for the epoch's row (rank 0 only)."""

    @abc.abstractmethod
    def state(self) -> dict:
        """What continues the run: weights, optimizer, schedule, random generators."""

    @abc.abstractmethod
    def load_state(self, state: dict) -> None:
        """state()'s objects back, from a resume point."""

    @abc.abstractmethod
    def save_best(self, epoch: int) -> None:
        """Keep the weights now as the selected ones, those of epoch `epoch` (rank 0 only)."""

    def record(self, history: list[dict]) -> None:
        """The rows so far, after each epoch and on resume (rank 0), for a job that logs them."""


class EpochLoop:
    """The epochs of one run, from its resume point when resumed: train, score on dev, log the
    epoch's row (one JSON line), write the resume point, keep the best epoch's weights (the
    first with the highest `select` of its row); a progress bar over the epochs.  `main`:
    this process scores and writes (rank 0 of a torchrun; the other ranks only train).
    point None: no resume point (nothing written).  desc: the progress bar's name."""

    def __init__(self, epochs: int, select: str, point: ResumePoint | None = None,
                 log: Callable[[str], None] = note, progress: bool = False, main: bool = True,
                 desc: str = "training"):
        self.epochs, self.select, self.point = epochs, select, point
        self.log, self.progress, self.main, self.desc = log, progress, main, desc

    def run(self, job: EpochJob, resume: bool = False) -> tuple[list[dict], dict | None]:
        """Train the epochs not done yet: (every epoch's row, the selected row); rank 0 only
        has rows, the other ranks ([], None)."""
        done, history, stopped = self._restore(job) if resume else (0, [], False)
        with tqdm(total=self.epochs, initial=done, desc=self.desc, unit="epoch",
                  disable=not (self.progress and self.main)) as bar:
            for epoch in range(done + 1, self.epochs + 1):
                if stopped:
                    break
                figures, stopped = job.train_epoch(epoch)
                if self.main:
                    history.append({"epoch": epoch, **figures, **job.score()})
                    self.log(json.dumps(history[-1]))
                    job.record(history)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()
                                     if k == self.select or k.endswith("loss") or k.startswith("loss_")})
                    self._save(job, epoch, history, stopped)
                bar.update()
        return history, self.selected(history)

    def selected(self, history: list[dict]) -> dict | None:
        """The first row with the highest score."""
        return max(history, key=lambda row: row[self.select]) if history else None

    def _save(self, job: EpochJob, epoch: int, history: list[dict], stopped: bool) -> None:
        if self.point is not None:
            self.point.save({**job.state(), "epoch": epoch, "history": json.dumps(history),
                             "seconds": job.budget.elapsed(), "stopped": stopped})
        self._keep_if_best(job, history, epoch)

    def _keep_if_best(self, job: EpochJob, history: list[dict], epoch: int) -> None:
        """job.save_best(epoch) where epoch is the selected one of `history`."""
        best = self.selected(history)
        if best is not None and best["epoch"] == epoch:
            job.save_best(epoch)

    def _restore(self, job: EpochJob) -> tuple[int, list[dict], bool]:
        """(epochs done, their rows, whether the time budget ended training) of the resume point,
        whose objects go back into `job`."""
        if self.point is None:
            raise MissingInput("no checkpoint directory: nothing to resume from")
        state = self.point.load()
        if "history" not in state:
            raise InvalidInput(f"{self.point.path}: written by an older trainer, whose state this one does not "
                               "read; start the run again (another --out, or without --resume)")
        job.load_state(state)
        done, history, stopped = int(state["epoch"]), json.loads(state["history"]), bool(state["stopped"])
        job.budget.resume(float(state["seconds"]))
        if self.main:
            job.record(history)  # rows logged past the state (a kill between the two) go
            self._keep_if_best(job, history, done)  # killed before it saved them
            self.log(f"resume: {done} epochs done, " + (
                "training had ended" + (" (the time budget ended it)" if stopped else "")
                if stopped or done >= self.epochs else f"continuing with epoch {done + 1}"))
        return done, history, stopped
