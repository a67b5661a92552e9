"""The model card of a bundle: card.json (for programs) and card.md (for people).

`trainer export` writes it (trainer.card) and lists both files with their sha256 in
manifest.json, so a card edited after export is refused like any other tampered
file.  This module only reads it and needs neither PyTorch nor the trainer: the
runtime prints `model_line()` when it loads a bundle.

card.json (card_version 1):

  labels, single_label, thresholds {label: t}
  training    data [{spec, kind, name, licence, real}], selected_epoch,
              train_utterances, dev_utterances, dev_weighted_f1 {head: %}, modalities
  branches    {text|audio|video|fusion: {trained, data [names], real (true/false/null),
               teachers [descriptions], utterances (int or null), note}}
  teachers    [{name, source, heads, licence, data}]
  text_encoder {name, licence[, fine_tuned_from, teacher {data, device, precision, encoder, train_seconds,
               epoch_chosen, dev_weighted_f1, test_weighted_f1, ...}]}
  licences    [{what, licence}]   data and weights, "unknown" where this project does not know
  calibration {method, file, fitted_on "dev", dev_utterances, uncalibrated_thresholds,
               dev {before|after: {per_label_ece, top_label_ece, weighted_f1}}} or null
  evaluations {NAME: {data, corpus, kind, split, protocol (argmax|thresholds), scoring,
               utterances, scores {weighted_f1, macro_f1, accuracy, ...}, per_label_f1,
               ece (top-label), per_label_ece, uncalibrated {per_label_ece, ece, weighted_f1} or null}}
  summary     one line (summary_line)
"""
from __future__ import annotations

import json
from pathlib import Path

from engines.bundle import CARD_JSON, MANIFEST, Bundle, BundleError, open_bundle, sha256

CARD_VERSION = 1
BRANCHES = ("text", "audio", "video")
# What "real data" means for each branch, in the one-line summary.
REAL_WHAT = {"text": "real text", "audio": "real speech", "video": "real faces", "fusion": "real data"}
MAX_LABELS_SHOWN = 5


def read_card(bundle: Bundle | str | Path) -> dict | None:
    """The bundle's card.json, or None when it has none (bundles exported before cards).

    A path is opened (and every file verified) first.  A card.json the manifest does
    not list, or one whose sha256 no longer matches, is refused: it was not written by
    the export that wrote the rest.
    """
    opened = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    path = opened.path / CARD_JSON
    expected = opened.manifest["files"].get(CARD_JSON)
    if expected is None:
        if path.exists():
            raise BundleError(f"{path}: not listed in {MANIFEST} (added after export?)")
        return None
    # Checked again here (open_bundle did once): the card is read later than the graphs.
    if not path.is_file() or sha256(path) != expected:
        raise BundleError(f"{path}: missing or sha256 does not match the manifest (corrupt or modified)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(card, dict) or card.get("card_version") != CARD_VERSION:
        raise BundleError(f"{path}: card_version {card.get('card_version') if isinstance(card, dict) else None!r}, "
                          f"this version reads {CARD_VERSION}")
    return card


def _labels_part(labels: list[str]) -> str:
    shown = labels if len(labels) <= MAX_LABELS_SHOWN else labels[:3] + ["..."]
    return f"{len(labels)} labels ({', '.join(shown)})"


def branch_phrase(name: str, branch: dict) -> str:
    """'text: MELD+GoEmotions', 'video: synthetic, FER2013 teacher, not trained on real faces', ..."""
    if not branch.get("trained", True):
        return f"{name}: not trained ({branch.get('note') or 'no data'})"
    parts = ["+".join(branch.get("data") or ["unknown data"])]
    parts += [f"{t} teacher" for t in branch.get("teachers") or []]
    if branch.get("real") is False:
        parts.append(f"not trained on {REAL_WHAT.get(name, 'real data')}")
    elif branch.get("real") is None:
        parts.append("real or not: unknown")
    return f"{name}: {', '.join(parts)}"


def score_phrase(name: str, evaluation: dict) -> str:
    """'MELD test wF1 56.1' (single-label), 'GoEmotions test wF1 50.2 mF1 40.3' (multi-label)."""
    scores = evaluation.get("scores", {})
    text = f"{evaluation.get('corpus') or name} {evaluation.get('split', '?')} wF1 {scores.get('weighted_f1', float('nan')):.1f}"
    if evaluation.get("protocol") == "thresholds" and "macro_f1" in scores:
        text += f" mF1 {scores['macro_f1']:.1f}"
    return text


def summary_line(card: dict) -> str:
    """One line: labels, what each branch learnt from, and the test (else dev) scores."""
    parts = [_labels_part(list(card.get("labels", [])))]
    branches = card.get("branches", {})
    parts += [branch_phrase(name, branches[name]) for name in BRANCHES if name in branches]
    evaluations = card.get("evaluations") or {}
    if evaluations:
        parts += [score_phrase(name, e) for name, e in evaluations.items()]
    else:
        training = card.get("training", {})
        dev = (training.get("dev_weighted_f1") or {}).get("fusion")
        names = "+".join(d.get("name", "?") for d in training.get("data", [])) or "unknown data"
        parts.append(f"{names} dev wF1 {dev:.1f}, no test evaluation" if dev is not None
                     else "no evaluation")
    return " · ".join(parts)


def model_line(bundle: Bundle | str | Path) -> str:
    """What the runtime prints when it loads a bundle: 'model: <summary>'."""
    opened = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    card = read_card(opened)
    if card is None:
        return f"model: {opened.path} has no model card ({CARD_JSON}; export it again with `trainer export`)"
    return f"model: {card.get('summary') or summary_line(card)}"
