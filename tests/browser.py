"""A real headless browser for the web chat's tests: Debian's Chromium, driven by Selenium.

Selenium never downloads a browser or a driver here (``SE_OFFLINE``): the test uses the system's
own, or says how to install them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver"


def require_browser() -> None:
    """Skip without Debian's Chromium and its driver (or Selenium); fail instead where CI promises them."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    required = os.environ.get("LLAMANTINO_REQUIRE_BROWSER") == "1"
    if missing:
        if required:
            pytest.fail(f"LLAMANTINO_REQUIRE_BROWSER=1 but {', '.join(missing)} missing: {INSTALL}")
        pytest.skip(f"Debian's chromium and chromium-driver are not installed: {INSTALL}")
    if importlib.util.find_spec("selenium") is None:
        (pytest.fail if required else pytest.skip)("selenium is not installed: pip install -e '.[test]'")


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000):
    """A headless Chromium session, always quit at the end."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
