"""A real headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium.

Selenium is given both binaries, so it downloads nothing. Tests that need the
browser skip, saying why, on a machine without them (scripts/setup.sh installs them).
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(width: int = 1280, height: int = 1000, offline: bool = False):
    """A headless Chromium; offline sends every request to a closed proxy port, so a page
    that tried to fetch anything from a network would fail to."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.skip(f"{path} is absent: install the Debian package {package} (scripts/setup.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox",  # root cannot use Chromium's sandbox
                "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}",
                "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    if offline:
        options.add_argument("--proxy-server=http://127.0.0.1:9")
        options.add_argument("--proxy-bypass-list=<-loopback>")
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def drawn_share(png: bytes) -> float:
    """Share of pixels that differ from the most common colour (the background)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 24)
    background = max(colors)[0]
    return 1.0 - background / (image.width * image.height)



def full_page_png(driver, width: int = 1280) -> bytes:
    """A screenshot of the whole page, however long, at `width` CSS pixels."""
    import time

    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    time.sleep(0.3)  # let the page lay itself out at that size
    png = driver.get_screenshot_as_png()
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return png
