"""CMU-MOSEI emotions (Zadeh et al. 2018) from a label CSV.

The common CSV layout: one row per clip (segment of a YouTube monologue) with columns
video_id, clip_id, the six emotion intensities happy sad anger surprise disgust fear
(0..3, averaged over annotators), and optionally text, split (or mode: train/valid/test)
and start/end (seconds in the video).  PATH is that CSV, or a folder with
{train,valid|dev,test}.csv when the split is given by file.  A label is present when its
intensity is > 0, the usual binarisation of MOSEI for multi-label emotion recognition.

Media under `media_root`: `{video_id}.mp4` with start/end, else the clip
`{video_id}/{clip_id}.mp4` or `{video_id}_{clip_id}.mp4`.
"""
from __future__ import annotations

from pathlib import Path

from trainer.data import Corpus, DataError, Utterance, number_turns
from trainer.datasets._common import find_media, media_duration, normalise_split, read_table, require_columns

LABELS = ["happiness", "sadness", "anger", "surprise", "disgust", "fear"]
# Column names seen for each emotion (the SDK's names first).
COLUMN_NAMES = {
    "happiness": ("happy", "happiness"),
    "sadness": ("sad", "sadness"),
    "anger": ("anger", "angry"),
    "surprise": ("surprise",),
    "disgust": ("disgust",),
    "fear": ("fear",),
}


def emotion_columns(table: Path, header: dict) -> dict[str, str]:
    found = {}
    for label, names in COLUMN_NAMES.items():
        name = next((n for n in names if n in header), None)
        if name is None:
            raise DataError(f"{table}: no column for {label} (tried {names}); has {list(header)}")
        found[label] = name
    return found


def tables(path: Path) -> list[tuple[Path, str | None]]:
    """(csv, split named by the file or None when rows carry their split)."""
    if path.is_file():
        return [(path, None)]
    found = []
    for split, names in (("train", ("train",)), ("dev", ("valid", "dev")), ("test", ("test",))):
        table = next((path / f"{n}.csv" for n in names if (path / f"{n}.csv").is_file()), None)
        if table is None:
            raise DataError(f"{path}: no {'/'.join(names)}.csv")
        found.append((table, split))
    return found


def load(path: Path, media_root: Path | None = None, limit: int | None = None) -> Corpus:
    media_root = Path(media_root) if media_root is not None else (path if path.is_dir() else path.parent)
    utterances = []
    for table, file_split in tables(path):
        rows = read_table(table, limit)
        if not rows:
            continue
        require_columns(table, rows[0], ("video_id", "clip_id"))
        columns = emotion_columns(table, rows[0])
        split_column = next((c for c in ("split", "mode") if c in rows[0]), None)
        if file_split is None and split_column is None:
            raise DataError(f"{table}: no split/mode column; give a folder with train/valid/test.csv")
        timed = "start" in rows[0] and "end" in rows[0]
        for n, row in enumerate(rows, 2):
            video, clip = row["video_id"], row["clip_id"]
            try:
                intensity = {label: float(row[col]) for label, col in columns.items()}
            except ValueError as exc:
                raise DataError(f"{table}:{n}: emotion intensity is not a number ({exc})") from exc
            if timed:
                start, end = float(row["start"]), float(row["end"])
                file, has_media = find_media([media_root / f"{video}.mp4"])
            else:
                file, has_media = find_media(
                    [media_root / video / f"{clip}.mp4", media_root / f"{video}_{clip}.mp4"])
                start, end = 0.0, media_duration(file) if has_media else 0.0
            utterances.append(
                Utterance(
                    session=video,
                    file=file,
                    start=start,
                    end=end,
                    text=row.get("text", ""),
                    speaker=video,  # one speaker per monologue video
                    labels=[label for label in LABELS if intensity[label] > 0],
                    split=file_split or normalise_split(table, row[split_column]),
                    extra={"dialogue": video, "clip_id": clip, "has_media": has_media,
                           "intensity": intensity},
                )
            )
    number_turns(utterances, lambda u: (u.start, _clip_order(u.extra["clip_id"])))
    return Corpus(list(LABELS), utterances)


def _clip_order(clip: str) -> tuple:
    """Clip ids are numbers as text ('2' before '10')."""
    return (0, int(clip), "") if clip.isdigit() else (1, 0, clip)
