"""Make the README's screenshots (docs/dashboard.png, docs/report.png) from a real replay.

    python docs/screenshots.py --model BUNDLE SESSION.mp4

Runs `realtime dashboard` and `realtime replay --realtime --report` on the session,
photographs the dashboard in headless Chromium (Debian's chromium + chromium-driver)
once the session has finished, then the report.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import chromium, full_page_png  # noqa: E402  (the same browser as the tests)
from tests.conftest import free_port  # noqa: E402


def save_small(png: bytes, path: Path) -> None:
    """128 colours, no dithering: a third of the bytes, no visible change for flat UI colours."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("media", type=Path, help="session to replay (.mp4)")
    parser.add_argument("--model", type=Path, required=True, help="model bundle")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default docs/)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="screenshots-"))
    report = work / "report.html"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    run = lambda *a, **kw: subprocess.Popen([sys.executable, "-m", "realtime.cli", *map(str, a)], cwd=ROOT, **kw)
    dashboard = run("dashboard", "--endpoint", endpoint, "--port", "0", stderr=subprocess.PIPE, text=True)
    url = None
    for line in dashboard.stderr:
        if match := re.search(r"dashboard on (http://\S+/)", line):
            url = match.group(1)
            break
    driver = chromium(1280, 900)
    replay = None
    try:
        if url is None:
            raise SystemExit("the dashboard printed no address")
        driver.get(url)
        replay = run("replay", args.media, "--model", args.model, "--realtime", "--endpoint", endpoint,
                     "--wait-subscribers", "1", "--all-messages", "--out", work / "out.jsonl",
                     "--report", report, "--quiet")
        if replay.wait() != 0:
            raise SystemExit("the replay failed")
        # The dashboard outlives the replay, so the page shows the whole session, finished.
        while "finished" not in driver.find_element("id", "session").text:
            time.sleep(0.2)
        save_small(full_page_png(driver), args.out / "dashboard.png")
        driver.get(report.as_uri())
        time.sleep(1)
        save_small(full_page_png(driver), args.out / "report.png")
    finally:
        driver.quit()
        for proc in (replay, dashboard):
            if proc is not None and proc.poll() is None:
                proc.terminate()
    print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
