"""Fixtures for the browser-module tests: a static file server and a Chromium driven by Playwright.

The module under test is served exactly as the relay will serve it (a static ES module), next to a
tiny test page that imports it and exposes it as ``window.pm``. Values cross the Python/JS boundary
as JSON in which byte strings are ``{"$bytes": "<hex>"}`` and integers outside JavaScript's safe
range are ``{"$bigint": "<decimal>"}``, so nothing is lost on the way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

STATIC_DIR = Path(__file__).resolve().parents[2] / "src" / "proof_messenger" / "web" / "static"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

TEST_PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>proof-messenger module test</title>
<script type="module">
import * as pm from "/proof-messenger.js";

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (text) => new Uint8Array(text.match(/../g)?.map((h) => parseInt(h, 16)) ?? []);

/** Transport JSON -> JS value ($bytes -> Uint8Array, $bigint -> BigInt). */
function revive(v) {
  if (Array.isArray(v)) return v.map(revive);
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$bytes") return unhex(v.$bytes);
    if (keys.length === 1 && keys[0] === "$bigint") return BigInt(v.$bigint);
    const out = {};
    for (const k of keys) {
      const value = revive(v[k]);
      Object.defineProperty(out, k, {value, enumerable: true, writable: true, configurable: true});
    }
    return out;
  }
  return v;
}

/** JS value -> transport JSON. */
function dehydrate(v) {
  if (v instanceof Uint8Array) return {$bytes: hex(v)};
  if (typeof v === "bigint") return {$bigint: v.toString()};
  if (Array.isArray(v)) return v.map(dehydrate);
  if (v !== null && typeof v === "object") {
    const out = {};
    for (const k of Object.keys(v)) out[k] = dehydrate(v[k]);
    return out;
  }
  return v;
}

/** Runs fn and reports {ok, value} or {ok: false, code, path, message} instead of throwing. */
async function attempt(fn) {
  try {
    return {ok: true, value: await fn()};
  } catch (e) {
    return {ok: false, code: e.code ?? null, path: e.path ?? null, message: String(e.message),
            name: e.name};
  }
}

window.pm = pm;
window.t = {hex, unhex, revive, dehydrate, attempt};
window.pmReady = true;
</script>
"""


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before the base class's __init__, which handles the request.
        self.extensions_map = {
            **SimpleHTTPRequestHandler.extensions_map,
            ".js": "text/javascript",
        }
        super().__init__(*args, directory=str(STATIC_DIR), **kwargs)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/__test__.html":
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(TEST_PAGE)))
            self.end_headers()
            self.wfile.write(TEST_PAGE)
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="session")
def static_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed; the browser-module tests need a real Chromium")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright (python) is not installed"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_test_page(browser: Any, port: int, host: str = "127.0.0.1") -> tuple[Any, Any]:
    """A fresh browser context (own IndexedDB) with the test page loaded and the module ready."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://{host}:{port}/__test__.html")
    page.wait_for_function("window.pmReady === true")
    return context, page


@pytest.fixture
def page(browser: Any, static_port: int) -> Iterator[Any]:
    context, pg = open_test_page(browser, static_port)
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def localhost_context_page(browser: Any, static_port: int) -> Iterator[tuple[Any, Any]]:
    """A page on http://localhost:PORT, so that WebAuthn's RP id can be ``localhost``."""
    context, pg = open_test_page(browser, static_port, host="localhost")
    try:
        yield context, pg
    finally:
        context.close()


@pytest.fixture(scope="module")
def shared_page(browser: Any, static_port: int) -> Iterator[Any]:
    """One page for many stateless evaluations (hypothesis batches)."""
    context, pg = open_test_page(browser, static_port)
    try:
        yield pg
    finally:
        context.close()
