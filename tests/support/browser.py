"""Headless Chromium (Debian's `chromium` package) for screenshots of HTML reports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    """The headless browser's path; skips the test (with the fix) when none is installed."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH: `apt-get install -y chromium` (Debian) to render reports")


def screenshot(page: Path, picture: Path, size: tuple[int, int] = (1200, 900)) -> Path:
    """Renders `page` (offline: no network, no sync, a fresh profile) into the PNG `picture`."""
    with tempfile.TemporaryDirectory(prefix="kftune-chromium-") as profile:
        completed = subprocess.run(
            [browser(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--screenshot={picture}", f"--window-size={size[0]},{size[1]}",
             page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=False)
    assert picture.is_file(), f"chromium wrote no screenshot: {completed.stderr[-2000:]}"
    return picture


def ink(picture: Path) -> dict[str, float]:
    """What the PNG holds: the share of non-white pixels and the number of distinct colours."""
    from PIL import Image

    with Image.open(picture) as image:
        raw = image.convert("RGB").tobytes()
    pixels = [raw[index:index + 3] for index in range(0, len(raw), 3)]
    non_white = sum(1 for pixel in pixels if min(pixel) < 235)
    return {"non_white": non_white / len(pixels), "colors": len(set(pixels))}
