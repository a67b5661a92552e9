"""Write config.toml from the option dataclasses' defaults and field comments.

  python scripts/write_config.py           # rewrite config.toml
  python scripts/write_config.py --check   # exit 1 (and show the diff) when config.toml is out of date

The one place that sees both sides' sections: realtime.config and trainer.config
each name the dataclass behind every section they read.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the checkout

from common.settings import DEFAULT_CONFIG, render_config  # noqa: E402
from realtime.config import SECTIONS as RUNTIME_SECTIONS  # noqa: E402
from trainer.config import SECTIONS as TRAINER_SECTIONS  # noqa: E402


def section_classes() -> dict[str, type]:
    """The dataclass behind every section of config.toml; a section both sides read must be one class."""
    shared = set(RUNTIME_SECTIONS) & set(TRAINER_SECTIONS)
    differ = sorted(s for s in shared if RUNTIME_SECTIONS[s] is not TRAINER_SECTIONS[s])
    if differ:
        raise ValueError(f"realtime and trainer read [{differ[0]}] into different classes")
    return {**RUNTIME_SECTIONS, **TRAINER_SECTIONS}


def render() -> str:
    return render_config(section_classes())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        diff = list(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                         str(args.out), "generated"))
        sys.stdout.writelines(diff)
        return 1 if diff else 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
