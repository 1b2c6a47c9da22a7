"""Render an HTML page in headless Chromium and read back what the page measured about itself.

A copy of the page, beside it (so relative image paths resolve), gets a script that runs once
everything has loaded and writes its findings as JSON into the DOM; ``--dump-dom`` prints the
DOM, and the JSON is read from it. Chromium is the Debian package ``chromium`` (CI installs it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

_CHECKS = """
<script>
window.addEventListener("load", () => {
  const width = window.innerWidth;
  const images = [...document.images].map((img) => ({
    src: img.getAttribute("src"),
    loaded: img.complete && img.naturalWidth > 0,
    natural: img.naturalWidth,
    shown: img.getBoundingClientRect().width,
    rendering: getComputedStyle(img).imageRendering,
  }));
  // a box that scrolls its own content may hold wider content; nothing else may stick out
  const scrolled = (e) => e.parentElement && e.parentElement.closest(".scroll") !== null;
  const overflowing = [...document.body.querySelectorAll("*")]
    .filter((e) => !scrolled(e) && e.getBoundingClientRect().right > width + 0.5)
    .map((e) => e.tagName.toLowerCase() + (e.className ? "." + e.className : ""));
  const result = document.createElement("pre");
  result.id = "bcosify-checks";
  result.textContent = JSON.stringify({
    width,
    pageWidth: document.documentElement.scrollWidth,
    images,
    overflowing,
  });
  document.body.appendChild(result);
});
</script>
"""


def _browser(*arguments: str, user_data: Path) -> list[str]:
    if CHROMIUM is None:
        raise FileNotFoundError("headless Chromium is not installed: apt-get install chromium")
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={user_data}",
        *arguments,
    ]


def measure_page(page: Path, *, width: int = 1280, height: int = 2000) -> dict[str, Any]:
    """Load ``page`` at ``width`` x ``height`` and return what it measured: the window width,
    the page's scroll width, every image (loaded, natural and shown width, CSS
    image-rendering) and the elements that stick out of the window outside scroll boxes."""
    page = page.resolve()
    probe = page.with_name(f".{page.stem}-checked.html")
    text = page.read_text()
    probe.write_text(text.replace("</body>", _CHECKS + "</body>") if "</body>" in text else text)
    try:
        with tempfile.TemporaryDirectory() as user_data:
            run = subprocess.run(
                _browser(
                    f"--window-size={width},{height}",
                    "--virtual-time-budget=10000",
                    "--dump-dom",
                    probe.as_uri(),
                    user_data=Path(user_data),
                ),
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
    finally:
        probe.unlink()
    found = re.search(r'<pre id="bcosify-checks">(.*?)</pre>', run.stdout, re.S)
    if found is None:
        raise AssertionError(f"the page's checks did not run; Chromium said: {run.stderr[-2000:]}")
    return json.loads(html.unescape(found.group(1)))
