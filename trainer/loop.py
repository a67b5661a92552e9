"""What the epochs of `trainer fit` and `trainer teach` share: the resume point, the check
that a resumed run brings the settings it started with, the learning-rate schedule, and the
time budget that shortens it.

After every epoch a run writes one state file (weights, optimizer, scheduler, random
generators, history, and the settings it started with), atomically; then, when the epoch is
the best on dev so far, the selected weights.  A kill between the two is repaired on resume:
the state names its best epoch.  A resume reads the state back only when every setting
equals the saved one, and names each that differs.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

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
        state = torch.load(self.path, weights_only=True, map_location="cpu") if state is None else state
        saved = state.get("settings")
        if saved is None:  # a state written before runs kept their settings: nothing to compare
            tqdm.write(f"resume: {self.path} does not record the run's settings; they are not checked")
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
