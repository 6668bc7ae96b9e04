"""Render a demo report in headless Chromium and check the screenshot is not blank.

Usage: python scripts/screenshot_report.py demo_out/report/report.html [--out report.png]
Needs Debian's `chromium` (apt-get install chromium); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.image as mpimg


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 5000) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={out}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    args = parser.parse_args()
    image = mpimg.imread(screenshot(args.report, args.out))
    ink = float((image[..., :3].mean(-1) < 0.9).mean())  # share of pixels that are not near-white
    print(f"{args.out}: {image.shape[1]}x{image.shape[0]} px, {100 * ink:.1f}% non-white")
    if ink < 0.02:
        sys.exit("the rendered report looks blank")


if __name__ == "__main__":
    main()
