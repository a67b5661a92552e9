"""GoEmotions, 28 labels, multi-label, text only (no dialogue, so no context).

  python benchmarks/goemotions.py [--epochs 2] [--max-len 64] [--subsample N] [--budget-minutes M]

Same runner as meld_text.py in multi-label mode (sigmoid/BCE on the mask token of
"<s1> text [SEP] Now <s1> feels [MASK]"), test once.  Metric: macro_f1 (percent) at the
paper's single threshold 0.3 for every label, the number to compare with its 46;
macro_f1_tuned with per-label thresholds tuned on dev.  Time-bounded on CPU: see the
metrics' n_train, epochs_run, stopped_by_budget.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meld_text import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("goemotions", "goemotions:/work/shared/data/goemotions", multi_label=True, context=False,
                 defaults={"epochs": 2, "max_len": 64, "lr": 1e-4}))
