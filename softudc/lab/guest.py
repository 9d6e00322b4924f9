"""Talking to test guests from inside the lab (their HTTP pages: /index.html, /counter, /probe)."""

from __future__ import annotations

import subprocess
import sys
import time

_GET = ("import sys, urllib.request\n"
        "try: print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())\n"
        "except Exception: print('')")


def http_get(netns: str, url: str) -> str:
    """The page's text, fetched from inside `netns`; '' if it did not answer."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _GET, url], capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip()


def wait_for_page(netns: str, url: str, contains: str = "", timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = http_get(netns, url)
        if text and contains in text:
            return text
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not show {contains!r} within {timeout:.0f} s (last: {text!r})")
        time.sleep(0.5)
