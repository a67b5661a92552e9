"""MELD (Poria et al. 2019): `{train,dev,test}_sent_emo.csv`, 7 emotions, one per utterance.

Media are the clips `dia{D}_utt{U}.mp4` of MELD.Raw, one per utterance, found under
`media_root` in the split's own folder (dialogue ids restart in every split, so a flat
folder would be ambiguous) or directly in `media_root`.  Without its clip an utterance is
text-only.
"""
from __future__ import annotations

from pathlib import Path

from trainer.data import Corpus, DataError, Utterance, number_turns
from trainer.datasets._common import SPLITS, find_media, read_table, require_columns

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
# The folder each split's clips come in, in MELD.Raw's archives.
SPLIT_DIRS = {
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "dev"),
    "test": ("output_repeated_splits_test", "test"),
}
COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID", "StartTime", "EndTime")


def seconds(stamp: str) -> float:
    """'00:16:16,059' (SRT style, comma before the milliseconds) -> 976.059."""
    hms, _, ms = stamp.strip().partition(",")
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s + int(ms or 0) / 1000


def load(path: Path, media_root: Path | None = None, limit: int | None = None) -> Corpus:
    media_root = Path(media_root) if media_root is not None else path
    utterances = []
    for split in SPLITS:
        table = path / f"{split}_sent_emo.csv"
        rows = read_table(table, limit)
        if rows:
            require_columns(table, rows[0], COLUMNS)
        for n, row in enumerate(rows, 2):  # line 1 is the header
            if row["Emotion"] not in LABELS:
                raise DataError(f"{table}:{n}: emotion {row['Emotion']!r} not in {LABELS}")
            d, u = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            name = f"dia{d}_utt{u}.mp4"
            file, has_media = find_media(
                [media_root / sub / name for sub in SPLIT_DIRS[split]] + [media_root / name]
            )
            # The clip is the utterance: it starts at 0 and lasts EndTime - StartTime
            # (times are positions in the episode).
            duration = max(0.0, seconds(row["EndTime"]) - seconds(row["StartTime"]))
            utterances.append(
                Utterance(
                    session=f"{split}/dia{d}",
                    file=file,
                    start=0.0,
                    end=duration,
                    text=row["Utterance"],
                    speaker=row["Speaker"],
                    labels=[row["Emotion"]],
                    split=split,
                    extra={
                        "dialogue": f"{split}/dia{d}",  # ids restart per split
                        "utterance_id": u,
                        "has_media": has_media,
                        "sentiment": row.get("Sentiment", ""),
                    },
                )
            )
    # Utterance_ID is the order of the dialogue (ids can have gaps; the rank is the turn).
    number_turns(utterances, lambda u: (u.extra["utterance_id"],))
    return Corpus(list(LABELS), utterances)
