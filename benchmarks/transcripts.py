"""Transcripts as word error rate compares them: the one normalisation the benchmarks and the
tests that score the pipeline's text use."""
from __future__ import annotations


def normalise(text: str) -> str:
    """Lower case, letters, digits and single spaces only."""
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def wer(reference: list[str], hypothesis: list[str]) -> float:
    """The word error rate of the texts `hypothesis` against `reference`, each joined in order."""
    import jiwer  # a test and benchmark dependency, not the product's

    return float(jiwer.wer(normalise(" ".join(reference)), normalise(" ".join(hypothesis))))
