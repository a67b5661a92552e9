"""IEMOCAP in the 6-class layout of TelME's `IEMOCAP_{train,dev,test}.csv` (Session 5 = test).

Columns: Utterance, Speaker, Dialogue_ID, Start_Time, End_Time, Wav_Path, Video_Path,
Emotion.  The "Speaker" column holds the utterance id (Ses01F_impro01_F000); the speaker
is the F/M letter that starts its last part.  (TelME's code uses the whole id as the
speaker, so every utterance gets a speaker of its own.)

Media: the dialogue's .avi (times Start_Time..End_Time are positions in it), else the
utterance's own .wav, under `media_root` (the folder holding the Session1..5 folders, or
its parent holding IEMOCAP_full_release/).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from trainer.data import Corpus, DataError, Utterance, number_turns
from trainer.datasets._common import SPLITS, find_media, read_table, require_columns

CODES = {"ang": "anger", "exc": "excited", "fru": "frustration", "hap": "happiness",
         "neu": "neutral", "sad": "sadness"}
LABELS = list(CODES.values())
COLUMNS = ("Utterance", "Speaker", "Dialogue_ID", "Start_Time", "End_Time", "Emotion")
RELEASE = "IEMOCAP_full_release"


def speaker_of(utterance_id: str) -> str:
    """Ses01F_impro01_F000 -> F; Ses05M_script03_2_M005 -> M."""
    letter = utterance_id.rsplit("_", 1)[-1][:1]
    if letter not in ("F", "M"):
        raise DataError(f"utterance id {utterance_id!r}: its last part does not start with F or M")
    return letter


def media_candidates(media_root: Path, listed: str) -> list[Path]:
    """Where a path listed as ./dataset/IEMOCAP_full_release/Session1/... may lie."""
    parts = PurePosixPath(listed.replace("\\", "/")).parts
    if not listed or RELEASE not in parts:
        return [media_root / listed] if listed else []
    inside = Path(*parts[parts.index(RELEASE) + 1 :])
    return [media_root / inside, media_root / RELEASE / inside]


def load(path: Path, media_root: Path | None = None, limit: int | None = None) -> Corpus:
    media_root = Path(media_root) if media_root is not None else path
    utterances = []
    for split in SPLITS:
        table = path / f"IEMOCAP_{split}.csv"
        rows = read_table(table, limit)
        if rows:
            require_columns(table, rows[0], COLUMNS)
        for n, row in enumerate(rows, 2):
            if row["Emotion"] not in CODES:
                raise DataError(f"{table}:{n}: emotion {row['Emotion']!r} not in {sorted(CODES)}")
            start, end = float(row["Start_Time"]), float(row["End_Time"])
            video = media_candidates(media_root, row.get("Video_Path", ""))
            wav = media_candidates(media_root, row.get("Wav_Path", ""))
            file, has_media = find_media(video + wav or [Path(row["Speaker"] + ".wav")])
            if has_media and file in wav:
                start, end = 0.0, end - start  # the utterance's own recording
            utterances.append(
                Utterance(
                    session=row["Dialogue_ID"],
                    file=file,
                    start=start,
                    end=end,
                    text=row["Utterance"],
                    speaker=speaker_of(row["Speaker"]),
                    labels=[CODES[row["Emotion"]]],
                    split=split,
                    extra={
                        "dialogue": row["Dialogue_ID"],
                        "utterance_id": row["Speaker"],
                        "has_media": has_media,
                        "dialogue_start": float(row["Start_Time"]),
                        "dialogue_end": float(row["End_Time"]),
                    },
                )
            )
    # Turns in the order utterances END: the text of a turn is known (transcribed) only
    # when it ends, so a live system's context for turn k holds exactly the turns that
    # ended before k.  The CSV order disagrees with the times where speech overlaps.
    number_turns(utterances, lambda u: (u.extra["dialogue_end"], u.extra["dialogue_start"]))
    return Corpus(list(LABELS), utterances)
