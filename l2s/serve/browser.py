"""Drive the web page of a running server in headless Chromium, as a person would: choose a video,
press the button, wait for the result, play it. Used by the browser test and by
`python benchmarks/serve.py --screenshot`.

Needs Playwright (the `test` extra) and Debian's chromium (`apt-get install chromium`); Playwright's
own browser download is never used, so nothing is fetched from the internet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
)
# Waits for the result element's metadata, reads the first bytes of the blob it plays, plays it
# (muted) and reports whether playback advanced.
PLAY_RESULT = """async (selector) => {
  const el = document.querySelector(selector);
  if (el.readyState < 1 && !el.error) {
    await new Promise((resolve) => {
      el.addEventListener("loadedmetadata", resolve, { once: true });
      el.addEventListener("error", resolve, { once: true });
    });
  }
  if (el.error) return { error: `media error ${el.error.code}: ${el.error.message}` };
  const head = new Uint8Array(await (await fetch(el.src)).arrayBuffer()).slice(0, 8);
  el.muted = true;
  try {
    await el.play();
  } catch (error) {
    return { error: `play() failed: ${error}` };
  }
  // Until playback advances, or 10 s: on a busy host the media pipeline may take longer than a
  // fixed moment to start (a 0.5-s wait failed a CI run on a loaded 2-core machine).
  const played = await new Promise((resolve) => {
    if (el.currentTime > 0) return resolve(true);
    const timer = setTimeout(() => resolve(el.currentTime > 0), 10000);
    el.addEventListener("timeupdate", () => {
      if (el.currentTime > 0) {
        clearTimeout(timer);
        resolve(true);
      }
    });
  });
  return { error: null, duration: el.duration, played, head: Array.from(head) };
}"""


@dataclass(frozen=True)
class PageResult:
    status: str  # the page's status line after the request
    error: str | None  # an error the page showed, or the media element's error
    duration: float = 0.0  # of the result <audio> / <video>, seconds
    played: bool = False  # its playback advanced
    head: bytes = b""  # first 8 bytes of the result ("RIFF…" for a WAV, "….ftyp" for an mp4)


def speak_in_page(
    url: str,
    video: Path,
    mode: str = "speech",
    chromium: str = CHROMIUM,
    screenshot: Path | None = None,
    timeout_s: float = 120.0,
) -> PageResult:
    """Upload `video` on the page at `url` in `mode` ("speech" or "dub") and check the result."""
    from playwright.sync_api import sync_playwright

    if mode not in ("speech", "dub"):
        raise ValueError(f"mode must be 'speech' or 'dub', got {mode!r}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 860, "height": 760})
            page.goto(f"{url}/")
            page.set_input_files("#video", str(video))
            page.check(f"#mode-{mode}")
            page.click("#submit")
            page.wait_for_function(
                "() => !document.getElementById('submit').disabled",
                timeout=timeout_s * 1000,
            )
            status = page.text_content("#status") or ""
            if "error" in (page.get_attribute("#status", "class") or ""):
                return PageResult(status=status, error=status)
            media = page.evaluate(
                PLAY_RESULT, f"#result-{'audio' if mode == 'speech' else 'video'}"
            )
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    if media["error"]:
        return PageResult(status=status, error=media["error"])
    return PageResult(
        status=status,
        error=None,
        duration=float(media["duration"]),
        played=bool(media["played"]),
        head=bytes(media["head"]),
    )
