"""ElderReact (Ma et al. 2019): clips of elderly people reacting, 6 binary emotions.

`{split}_labels.txt`: file anger disgust fear happiness sadness surprise gender valence
(space separated).  `{split}_audio.txt`: clip id <TAB> 148 COVAREP values (74 means, 74
standard deviations), kept as a precomputed audio-feature vector in
extra["audio_features"].  There are no transcripts.  The mp4 clips, when a user has them,
lie under `media_root` (directly or in a folder named for the split).
"""
from __future__ import annotations

from pathlib import Path

from trainer.data import Corpus, DataError, Utterance
from trainer.datasets._common import SPLITS, find_media, media_duration

LABELS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
N_AUDIO_FEATURES = 148


def read_audio_features(path: Path, limit: int | None) -> dict[str, list[float]]:
    features = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and n > limit:
                break
            clip, _, values = line.rstrip("\n").partition("\t")
            row = [float(v) for v in values.split()]
            if len(row) != N_AUDIO_FEATURES:
                raise DataError(f"{path}:{n}: {len(row)} values, expected {N_AUDIO_FEATURES}")
            features[clip] = row
    return features


def load(path: Path, media_root: Path | None = None, limit: int | None = None) -> Corpus:
    media_root = Path(media_root) if media_root is not None else path
    utterances = []
    for split in SPLITS:
        table = path / f"{split}_labels.txt"
        if not table.is_file():
            raise DataError(f"{table}: no such file")
        audio_file = path / f"{split}_audio.txt"
        audio = read_audio_features(audio_file, limit) if audio_file.is_file() else {}
        for n, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
            if limit is not None and n > limit:
                break
            fields = line.split()
            if len(fields) != 9:
                raise DataError(f"{table}:{n}: {len(fields)} fields, expected 9")
            name, flags, gender, valence = fields[0], fields[1:7], fields[7], fields[8]
            if any(flag not in ("0", "1") for flag in flags):
                raise DataError(f"{table}:{n}: emotion flags {flags} are not 0/1")
            clip = Path(name).stem
            file, has_media = find_media([media_root / name, media_root / split / name])
            extra = {"has_media": has_media, "gender": gender, "valence": float(valence)}
            if clip in audio:
                extra["audio_features"] = audio[clip]
            utterances.append(
                Utterance(
                    # clips are named <source video>_<clip number>
                    session=clip.rsplit("_", 1)[0],
                    file=file,
                    start=0.0,
                    end=media_duration(file) if has_media else 0.0,
                    text="",
                    speaker="",
                    labels=[label for label, flag in zip(LABELS, flags) if flag == "1"],
                    split=split,
                    extra=extra,
                )
            )
    return Corpus(list(LABELS), utterances)
