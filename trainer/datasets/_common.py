"""Helpers shared by the corpus adapters: reading tables, finding media (turns are numbered by
trainer.data.number_turns)."""
from __future__ import annotations

import csv
import wave
from collections.abc import Iterable
from pathlib import Path

from trainer.data import DataError

SPLITS = ("train", "dev", "test")
# Names corpora use for the held-out split that selects the model.
SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "val": "dev", "validation": "dev",
                 "test": "test"}


def read_table(path: Path, limit: int | None = None, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a CSV with a header, as dicts; at most `limit` rows.

    newline="" lets the csv module handle CRLF files and quoted fields that hold commas
    (MELD's times "00:16:16,059").
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter=delimiter):
            if limit is not None and len(rows) >= limit:
                break
            rows.append(row)
    return rows


def require_columns(path: Path, row: dict, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(row)}")


def normalise_split(path: Path, name: str) -> str:
    split = SPLIT_ALIASES.get(name.strip().lower())
    if split is None:
        raise DataError(f"{path}: unknown split {name!r} (expected one of {sorted(SPLIT_ALIASES)})")
    return split


def find_media(candidates: Iterable[Path]) -> tuple[Path, bool]:
    """The first candidate that exists, or the first candidate and False.

    An utterance whose media are missing stays in the corpus as text-only
    (extra["has_media"] = False) and `file` still says where we looked.
    """
    candidates = list(candidates)
    for path in candidates:
        if path.is_file():
            return path, True
    return candidates[0], False


def media_duration(path: Path) -> float:
    """Seconds of a whole clip, from its header (no decoding)."""
    if path.suffix.lower() == ".wav":
        try:
            with wave.open(str(path)) as w:
                return w.getnframes() / w.getframerate()
        except (wave.Error, EOFError):
            pass  # not PCM: PyAV reads it below
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration is None:
                raise DataError(f"{path}: no duration in the container")
            return container.duration / 1_000_000  # microseconds
    except av.error.FFmpegError as exc:
        raise DataError(f"{path}: not a readable media file ({exc})") from exc
