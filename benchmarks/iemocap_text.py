"""IEMOCAP 6-class (Session 5 = test), text only, with past-only context: the text teacher.

  python benchmarks/iemocap_text.py [options of meld_text.py]

Same runner as meld_text.py (see there); speakers are the F/M letter of the utterance id,
turns are ordered by end time.  Metric: weighted_f1 (argmax), percent.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meld_text import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("iemocap_text", "iemocap:/work/shared/data/iemocap"))
