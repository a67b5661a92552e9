"""GoEmotions (Demszky et al. 2020): Reddit comments, 28 labels, multi-label, text only.

`{train,dev,test}.tsv`: text <TAB> comma-separated label ids into labels.txt <TAB> id.
With ekman=True the 28 labels are grouped into Ekman's 6 + neutral by
ekman_mapping.json; a comment keeps every group one of its labels falls in.
"""
from __future__ import annotations

import json
from pathlib import Path

from trainer.data import Corpus, DataError, Utterance
from trainer.datasets._common import SPLITS


def read_labels(path: Path) -> list[str]:
    labels = [line.strip() for line in (path / "labels.txt").read_text(encoding="utf-8").splitlines()]
    return [label for label in labels if label]


def ekman_groups(path: Path, labels: list[str]) -> dict[str, str]:
    """fine label -> Ekman group, checked to cover every fine label exactly once."""
    mapping = json.loads((path / "ekman_mapping.json").read_text(encoding="utf-8"))
    group_of = {}
    for group, members in mapping.items():
        for label in members:
            if label in group_of:
                raise DataError(f"{path}/ekman_mapping.json: {label!r} is in two groups")
            group_of[label] = group
    missing = set(labels) - set(group_of)
    if missing:
        raise DataError(f"{path}/ekman_mapping.json: no group for {sorted(missing)}")
    return group_of


def load(path: Path, ekman: bool = False, limit: int | None = None) -> Corpus:
    fine = read_labels(path)
    group_of = ekman_groups(path, fine) if ekman else {label: label for label in fine}
    labels = sorted(set(group_of.values())) if ekman else fine
    utterances = []
    for split in SPLITS:
        table = path / f"{split}.tsv"
        if not table.is_file():
            raise DataError(f"{table}: no such file")
        with table.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if limit is not None and n > limit:
                    break
                try:
                    text, ids, comment = line.rstrip("\n").split("\t")
                    names = [fine[int(i)] for i in ids.split(",")]
                except (ValueError, IndexError) as exc:
                    raise DataError(f"{table}:{n}: expected text, label ids, id ({exc})") from exc
                utterances.append(
                    Utterance(
                        session=comment,
                        file=Path(),
                        start=0.0,
                        end=0.0,
                        text=text,
                        speaker="",
                        labels=sorted({group_of[name] for name in names}, key=labels.index),
                        split=split,
                        extra={"id": comment, "has_media": False, "fine_labels": names},
                    )
                )
    return Corpus(labels, utterances)
